"""data and tasks: file resolution and validation, answer extraction, batched scoring against one-by-one
scoring with the plain HF model, decisions made once per item, and the generative path (tiny models)."""

import json
import types

import pytest
import torch
from chartok import char_tokenizer
from conftest import tiny_model, write_math

from l2a import data
from l2a.decision import GateDecision
from l2a.gated import GatedModel
from l2a.scoring import continuation_logprobs
from l2a.tasks import (GSM8K, GSM8KBudget, GSM8KConcise, GSM8KLoglik, MultipleChoice, extract_answer, get_task,
                       math_prompt, normalize_number)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MC_ROWS = [
    {"question": "What is 2+2?", "choices": ["4", "five", "a cat"], "answer": 0},
    {"question": "", "choices": ["The cup fell so it broke.", "The cup fell so it sang."], "answer": 0},
    {"question": "Sky colour?", "choices": ["blue", "green"], "answer": 1, "subject": "x"},
]


@pytest.fixture
def gm():
    return GatedModel(tiny_model("llama", n_layers=4), tokenizer=char_tokenizer())


# ---- answers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,want", [
    ("so she makes 18 dollars.\n#### 18", "18"),
    ("#### $1,234.00", "1234"),
    ("the answer is \\boxed{42}. Check: 7", "42"),
    ("I think 3 then 5.", "5"),
    ("It is -0.", "0"),
    ("costs $18.50 total", "18.5"),
    ("18.0", "18"),
    ("#### 7\nQuestion: next one has 9", "7"),
    ("no digits here", None),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_normalize_number():
    assert normalize_number("1,000") == normalize_number("1000.0") == "1000"
    assert normalize_number("$5.") == "5"
    assert normalize_number(None) is None


# ---- data ------------------------------------------------------------------------------------------------


def test_readers_validate_with_file_line_and_format(tmp_path):
    good = write_jsonl(tmp_path / "mc.jsonl", MC_ROWS)
    assert data.read_mc(good)[2]["subject"] == "x"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(MC_ROWS[0]) + "\n" + json.dumps({"question": "q", "choices": ["a", "b"], "answer": 2}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: .*answer.*expected one object per line: \{\"question\""):
        data.read_mc(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not valid JSON"):
        data.read_math(bad)
    bad.write_text(json.dumps({"question": "q", "answer": "no final number"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: .*####"):
        data.read_math(bad)


def test_missing_file_lists_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("L2A_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"(?s)nope\.jsonl.*tried:.*" + str(tmp_path)):
        data.resolve("nope.jsonl")
    (tmp_path / "mc").mkdir()
    write_jsonl(tmp_path / "mc" / "x.jsonl", MC_ROWS)
    rows, source = data.load_mc("mc/x.jsonl")  # relative paths resolve under $L2A_DATA
    assert len(rows) == 3 and source == f"file:{tmp_path / 'mc' / 'x.jsonl'}"


def test_gsm8k_falls_back_to_generated_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "data_roots", lambda: [tmp_path])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows, source = data.load_math()
    assert source == "generated" and len(rows) == 50
    assert rows == data.load_math()[0]  # deterministic
    for r in rows:
        assert data._check_math(r) is None
    # The worked answer's arithmetic is right: the last <<expr=value>> equals the #### target.
    for r in rows:
        expr, value = r["answer"].rsplit("<<", 1)[1].split(">>")[0].split("=")
        assert eval(expr) == int(value) == int(data.target(r))


# ---- scoring ---------------------------------------------------------------------------------------------


def reference_logprob(hf, seq, k):
    """Summed logprob of the last k tokens of one unpadded sequence, plain HF model."""
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([seq])).logits[0].float(), -1)  # (T, V)
    return sum(float(logp[t - 1, seq[t]]) for t in range(len(seq) - k, len(seq)))


def test_batched_left_padded_scores_equal_one_by_one(gm):
    seqs = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]
    conts = [3, 1, 4]
    skip = GateDecision(layers=(True, False, True, True))
    ds = [gm.dense_decision(), skip, gm.dense_decision()]
    rows = []  # positions reaching the LM head: only those predicting a continuation token
    hook = gm.hf.lm_head.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape))
    got = continuation_logprobs(gm, seqs, conts, ds, pad_id=0)
    hook.remove()
    assert [r[:-1] for r in rows] == [(sum(conts),)]
    for i, (s, k) in enumerate(zip(seqs, conts)):
        if i == 1:
            ids = torch.tensor([s])
            with torch.no_grad():
                logp = torch.log_softmax(gm.forward(ids, decisions=skip)[0].float(), -1)  # alone, unpadded
            want = sum(float(logp[t - 1, s[t]]) for t in range(len(s) - k, len(s)))
        else:
            want = reference_logprob(gm.hf, s, k)
        assert got[i][0] == pytest.approx(want, abs=1e-4)
        assert got[i][1].shape == (k,) and got[i][2].shape == (k,)


def test_mc_scores_match_manual_and_decide_once_per_item(gm, tmp_path):
    task = get_task("mc")
    rows, _ = task.load(write_jsonl(tmp_path / "mc.jsonl", MC_ROWS))
    seen = []

    def decide(ids, mask):
        seen.extend(ids[i][mask[i].bool()].tolist() for i in range(ids.shape[0]))
        return [gm.dense_decision()] * ids.shape[0]

    items = [it for batch in task.run(gm, rows, decide, batch_size=2) for it in batch]
    tok = gm.tokenizer
    # one decision per item (not per choice), from the question prompt; WinoGrande: the sentences' shared start
    assert seen == [tok(f"Question: {rows[0]['question']}\nAnswer:")["input_ids"],
                    [tok.eos_token_id] + tok("The cup fell so it ", add_special_tokens=False)["input_ids"],
                    tok(f"Question: {rows[2]['question']}\nAnswer:")["input_ids"]]
    for row, it in zip(rows, items):
        if row["question"]:
            ctx = tok(f"Question: {row['question']}\nAnswer:")["input_ids"]
            conts = [tok(" " + c, add_special_tokens=False)["input_ids"] for c in row["choices"]]
        else:  # WinoGrande: the whole sentence after the prefix token
            ctx = [tok.eos_token_id]
            conts = [tok(c, add_special_tokens=False)["input_ids"] for c in row["choices"]]
        raw = [reference_logprob(gm.hf, ctx + c, len(c)) for c in conts]
        assert it.metrics["logprobs"] == pytest.approx(raw, abs=1e-4)
        best = max(range(len(raw)), key=raw.__getitem__)
        best_norm = max(range(len(raw)), key=lambda j: raw[j] / len(row["choices"][j]))
        assert it.score == float(best == row["answer"])
        assert it.metrics["acc_norm"] == float(best_norm == row["answer"])
    assert MultipleChoice().aggregate(items)["acc_norm"] == sum(i.metrics["acc_norm"] for i in items) / 3


class FakeGen:
    """Stands in for a GatedModel whose generation we choose: checks extraction and eos handling."""

    def __init__(self, tok, answers):
        self.tokenizer, self.answers = tok, answers
        self.hf = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=tok.eos_token_id))
        self.device, self.last_cache = torch.device("cpu"), None
        self.answer_format, self.last_think = None, None

    def generate(self, ids, attention_mask=None, decisions=None, max_new_tokens=8, **kw):
        new = [self.tokenizer(a, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id] for a in self.answers]
        width = max(map(len, new))
        new = [n + [self.tokenizer.eos_token_id] * (width - len(n)) for n in new]  # finished rows pad with eos
        return torch.cat([ids, torch.tensor(new)], dim=1)


def test_gsm8k_extracts_and_counts_tokens_to_eos():
    tok = char_tokenizer(chat=True)
    rows = [{"question": "1+1?", "answer": "1+1=2\n#### 2"}, {"question": "2+3?", "answer": "#### 5"}]
    fake = FakeGen(tok, ["So it is 2.\n#### 2", "maybe 4"])
    items = next(GSM8K().run(fake, rows, lambda ids, m: [GateDecision.dense(2)] * ids.shape[0], batch_size=2))
    assert [i.score for i in items] == [1.0, 0.0]
    # think tokens: before the answer marker (whitespace before it excluded), else up to eos
    assert [i.new_tokens for i in items] == [len("So it is 2."), len("maybe 4")]
    assert [i.tokens for i in items] == [len("So it is 2.\n#### 2") + 1, len("maybe 4") + 1]
    assert items[1].metrics == {"prediction": "4", "target": "5", "forced": False}


def test_gsm8k_generates_with_decisions_and_think_cap(gm):
    gm.tokenizer.chat_template = None  # plain "Question: ...\nAnswer:" prompt
    gm.hf.generation_config.eos_token_id = 1
    rows = data.generate_gsm8k(3)
    capped = GateDecision(layers=(True, True, False, True), think_tokens=2)
    items = [it for b in GSM8K().run(gm, rows, lambda ids, m: [capped] * ids.shape[0], batch_size=3, max_new_tokens=30)
             for it in b]
    for it in items:  # 2 think tokens, then the forced marker and a parseable answer
        assert it.decision == capped and it.new_tokens == 2 and it.metrics["forced"]
        assert it.metrics["prediction"] is not None and it.tokens <= 30
        assert it.kv_bytes_measured > 0
    # an allowance is clipped to leave room for marker + answer in max_new_tokens (to 0 here)
    items = next(GSM8K().run(gm, rows, lambda ids, m: [capped] * ids.shape[0], batch_size=3, max_new_tokens=8))
    assert all(it.metrics["forced"] and it.new_tokens == 0 for it in items)


def test_loglik_task(gm):
    rows = data.generate_gsm8k(2)
    items = [it for b in GSM8KLoglik().run(gm, rows, lambda ids, m: [gm.dense_decision()] * ids.shape[0]) for it in b]
    agg = GSM8KLoglik().aggregate(items)
    assert agg["nll"] > 0 and 0 <= agg["token_acc"] <= 1
    assert all(it.score in (0.0, 1.0) and it.metrics["logprob"] < 0 for it in items)


@pytest.mark.parametrize("misses,hit", [((), 1.0), ((-3,), 1.0), ((-2,), 0.0), ((-1,), 0.0), ((-4,), 1.0)])
def test_loglik_answer_match_skips_whitespace_tokens(gm, monkeypatch, misses, hit):
    """The char tokenizer splits " 18" into " ", "1", "8", as SmolLM2's does: a miss on the bare " "
    (position -3) or on the reasoning before "####" (-4) keeps the answer; a missed digit loses it."""
    import l2a.tasks as T

    def fake(model, decide, seqs, conts, prompt_lens, owner, pad):  # every continuation token hit but `misses`
        out = []
        for c in conts:
            h = torch.ones(c, dtype=torch.bool)
            h[list(misses)] = False
            out.append((-1.0, None, h))
        return out, [gm.dense_decision()] * len(seqs)

    monkeypatch.setattr(T, "routed_logprobs", fake)
    rows = [{"question": "Two and 16?", "answer": "2 + 16 = 18\n#### 18"}]
    (item,) = next(GSM8KLoglik().run(gm, rows, None))
    assert item.score == hit


def _gated_with_router(seed=2):
    from l2a.gates import GateConfig, GatePolicy

    m = GatedModel(tiny_model("llama", n_layers=6), tokenizer=char_tokenizer())
    torch.manual_seed(seed)
    m.policy = GatePolicy(GateConfig(n_layers=6, n_groups=4, hidden=64, width=32))
    with torch.no_grad():
        for p in m.policy.parameters():
            p.normal_(0, 0.7)
    m.policy.eval()
    return m


@pytest.mark.parametrize("task_name", ["mc", "gsm8k-loglik"])
def test_learned_gates_decide_inside_the_scoring_pass_as_if_decided_first(tmp_path, task_name):
    """The learned gates' router pass starts the scoring pass (the prompt runs once): same decisions and
    scores as deciding on the prompts first, with one pass of the first layer instead of two."""
    from l2a.baselines import L2APolicy
    from l2a.budget import Budget
    from l2a.evaluate import decider

    gm = _gated_with_router()
    task = get_task(task_name)
    if task_name == "mc":
        rows = MC_ROWS + [{"question": f"Item {k}: what follows {k}?", "choices": [str(k + 1), "x" * (k + 1), "no"],
                           "answer": 0} for k in range(6)]
        rows, _ = task.load(write_jsonl(tmp_path / "mc.jsonl", rows))
    else:
        rows, _ = task.load(write_math(tmp_path / "m.jsonl", n=8))
    b = Budget(layers=0.6)
    fused = decider(gm, L2APolicy(), b)
    assert hasattr(fused, "score")

    def first(ids, mask):  # decide on the prompts, then score: the two-pass way
        return gm.decide(ids, [b] * ids.shape[0], attention_mask=mask)

    layer0, calls = [], []
    hooks = [gm.hf.model.layers[0].base_layer.register_forward_hook(lambda *a: layer0.append(1)),
             gm.hf.model.register_forward_hook(lambda *a: calls.append(1))]
    got = [it for batch in task.run(gm, rows, fused, batch_size=4) for it in batch]
    n_layer0, n_calls = len(layer0), len(calls)
    layer0[:], calls[:] = [], []
    want = [it for batch in task.run(gm, rows, first, batch_size=4) for it in batch]
    for h in hooks:
        h.remove()
    assert n_layer0 * 2 == len(layer0) and n_calls * 2 == len(calls)  # one model call per batch, not two
    assert [it.decision for it in got] == [it.decision for it in want]
    assert len({it.decision.layers for it in got}) > 1  # input-aware: the test can tell prompts apart
    key = "logprobs" if task_name == "mc" else "logprob"
    for g, w in zip(got, want):
        assert g.metrics[key] == pytest.approx(w.metrics[key], abs=1e-5)
        assert g.score == w.score


def test_route_from_gives_a_row_another_row_s_decision(tmp_path):
    from l2a.scoring import left_pad

    gm = _gated_with_router()
    rows, _ = GSM8KLoglik().load(write_math(tmp_path / "m.jsonl", n=8))
    prompts = [math_prompt(gm.tokenizer, r["question"]) for r in rows]
    ids, mask = left_pad(prompts, 0)
    own = gm.decide(ids, 0.6, attention_mask=mask)
    a, b = next((i, j) for i in range(8) for j in range(8) if own[i] != own[j])
    ids, mask = left_pad([prompts[a], prompts[b]], 0)
    gm.forward(ids, mask, budget=0.6, route_mask=mask.bool(), route_from=torch.tensor([0, 0]))
    assert gm.last_decisions == [own[a], own[a]]
    with pytest.raises(ValueError, match="only apply with budget"):
        gm.forward(ids, mask, route_mask=mask.bool())


def test_unknown_task_lists_names():
    with pytest.raises(ValueError, match="gsm8k, gsm8k-budget, gsm8k-concise, gsm8k-loglik, mc"):
        get_task("arc")
    with pytest.raises(ValueError, match="unknown prompt style 'terse'; valid: steps, concise"):
        math_prompt(char_tokenizer(chat=True), "1+1?", "terse")


class Recording(FakeGen):
    """FakeGen that keeps the prompts it was asked to continue."""

    def generate(self, ids, attention_mask=None, decisions=None, max_new_tokens=8, **kw):
        self.prompts = [self.tokenizer.decode(r[m.bool()]) for r, m in zip(ids, attention_mask)]
        self.decisions = decisions
        return super().generate(ids, attention_mask, decisions, max_new_tokens, **kw)


def test_budget_aware_prompting_reprompts_and_redecides_only_capped_rows():
    tok = char_tokenizer(chat=True)
    rows = [{"question": "capme 1+1?", "answer": "#### 2"}, {"question": "2+3?", "answer": "#### 5"}]
    seen = []

    def decide(ids, mask):  # rows asking "capme" get an allowance; the allowance tells which prompt it saw
        texts = [tok.decode(r[m.bool()]) for r, m in zip(ids, mask)]
        seen.append(texts)
        return [GateDecision.dense(2) if "capme" not in t else
                GateDecision(layers=(True, True), think_tokens=7 if "plain words" in t else 3) for t in texts]

    fake = Recording(tok, ["#### 2", "#### 5"])
    items = next(GSM8KBudget().run(fake, rows, decide, batch_size=2, max_new_tokens=64))
    assert len(seen) == 2 and len(seen[1]) == 1 and "plain words" in seen[1][0]  # capped row decided again
    assert "plain words" in fake.prompts[0] and "capme" in fake.prompts[0]
    assert fake.prompts[1] == tok.decode(math_prompt(tok, rows[1]["question"]))  # uncapped: the gsm8k prompt
    assert items[0].decision.think_tokens == 7 and items[1].decision.think_tokens is None
    # gsm8k-concise asks every row; plain gsm8k none
    fake = Recording(tok, ["#### 2", "#### 5"])
    next(GSM8KConcise().run(fake, rows, decide, batch_size=2))
    assert all("plain words" in p for p in fake.prompts)
    fake = Recording(tok, ["#### 2", "#### 5"])
    next(GSM8K().run(fake, rows, decide, batch_size=2))
    assert not any("plain words" in p for p in fake.prompts)
