"""Budget forcing: triggers exactly at each row's allowance, always yields a parseable answer."""

import json

import pytest
import torch
from chartok import char_tokenizer
from conftest import tiny_model
from transformers import LogitsProcessorList

from l2a.gated import GatedModel
from l2a.reasoning import ThinkBudgetProcessor
from l2a.tasks import extract_answer


@torch.no_grad()
def test_forcing_per_row_and_parseable_answer():
    tok = char_tokenizer()
    m = GatedModel(tiny_model("llama", n_layers=2), tokenizer=tok)
    m.hf.generation_config.eos_token_id = 1  # the processor's EOS is the one generate stops at
    ids = tok(["Q: 1+1?", "Q: 2+3?", "Q: 9-4?"], return_tensors="pt", padding=True)
    marker = tok("\n#### ", add_special_tokens=False)["input_ids"]
    digits = [tok.convert_tokens_to_ids(c) for c in "0123456789"]
    allowances = [3, 4, None]
    T = ids["input_ids"].shape[1]
    proc = ThinkBudgetProcessor(allowances, T, marker, eos_id=1, answer_tokens=4, numeric_ids=digits)
    out = m.generate(ids["input_ids"], attention_mask=ids["attention_mask"], max_new_tokens=20,
                     logits_processor=LogitsProcessorList([proc]), pad_token_id=0)
    free = m.generate(ids["input_ids"], attention_mask=ids["attention_mask"], max_new_tokens=20,
                      pad_token_id=0)
    for row, a in enumerate(allowances):
        gen = out[row, T:].tolist()
        if a is None:  # uncapped row: untouched by the processor
            assert gen == free[row, T:].tolist()
            continue
        assert gen[:a] == free[row, T : T + a].tolist()  # thinking before the allowance is the model's own
        assert 1 not in gen[:a]  # (the row did not finish by itself first: the test would not force it)
        assert gen[a : a + len(marker)] == marker  # forcing starts exactly at the allowance
        text = tok.decode(gen, skip_special_tokens=True)
        assert extract_answer(text) is not None  # a parseable number follows the marker
        assert 1 in gen[a + len(marker) : a + len(marker) + 5]  # bounded answer, then EOS


def test_bad_allowances_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        ThinkBudgetProcessor([-1], 4, [5], eos_id=1)
    with pytest.raises(ValueError, match="marker"):
        ThinkBudgetProcessor([3], 4, [], eos_id=1)


# ---- wired into GatedModel.generate, tasks and the gates ----------------------------------------------

from l2a.budget import Budget  # noqa: E402
from l2a.decision import GateDecision  # noqa: E402
from l2a.gates import GateConfig, GatePolicy  # noqa: E402
from l2a.reasoning import AnswerFormat, think_length  # noqa: E402


def _gm(n_layers=4):
    tok = char_tokenizer()
    m = GatedModel(tiny_model("llama", n_layers=n_layers), tokenizer=tok)
    m.hf.generation_config.eos_token_id = 1
    return m, tok


@torch.no_grad()
def test_generate_forces_each_row_with_its_own_decision_and_override_wins():
    m, tok = _gm()
    ids = tok(["Q: 1+1?", "Q: 2+3?", "Q: 9-4?", "Q: 7*2?"], return_tensors="pt", padding=True)
    x, mask = ids["input_ids"], ids["attention_mask"]
    T = x.shape[1]
    marker = tok("\n#### ", add_special_tokens=False)["input_ids"]
    # mixed layer/group decisions, learned allowances 6/9/None/4; the request overrides row 1 to 3 and row 3 to none
    ds = [GateDecision(layers=(True, False, True, True), think_tokens=6),
          GateDecision(layers=(True, True, True, True), kv_groups=((True, False, True, False),) * 4, think_tokens=9),
          GateDecision(layers=(True, True, False, True)),
          GateDecision(layers=(True, True, True, True), think_tokens=4)]
    override = [None, 3, None, 0]
    free = m.generate(x, attention_mask=mask, decisions=[GateDecision(layers=d.layers, kv_groups=d.kv_groups) for d in ds],
                      max_new_tokens=30)
    out = m.generate(x, attention_mask=mask, decisions=ds, thinking_token_budget=override, max_new_tokens=30)
    want = [6, 3, None, 0]  # the explicit budget wins; None falls back to the decision's allowance
    assert m.last_think.forced_at == want
    for row, a in enumerate(want):
        gen = out[row, T:].tolist()
        if a is None:
            assert gen == free[row, T:].tolist()  # an uncapped row is exactly its own uncapped generation
            continue
        assert gen[:a] == free[row, T : T + a].tolist()  # the row's own thinking under its own decision
        assert gen[a : a + len(marker)] == marker  # forcing starts exactly at the allowance
        assert extract_answer(tok.decode(gen, skip_special_tokens=True)) is not None
        assert think_length(tok, gen, {1}) == a
    with pytest.raises(ValueError, match="thinking_token_budget"):
        m.generate(x, attention_mask=mask, decisions=ds, thinking_token_budget=[1, 2], max_new_tokens=3)


def test_think_length_counts_tokens_before_the_marker():
    tok = char_tokenizer()
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert think_length(tok, enc("abc\n#### 12") + [1, 5], {1}) == 3
    assert think_length(tok, enc("no answer") + [1] + enc("later #### 3"), {1}) == len("no answer")
    assert think_length(tok, enc("#### 7"), {1}) == 0
    fmt = AnswerFormat(marker="</think>\n\n", detect="</think>", numeric=False)
    assert think_length(tok, enc("hmm</think>\n\n42"), {1}, fmt) == 3


def _think_policy(seed=0):
    torch.manual_seed(seed)
    p = GatePolicy(GateConfig(n_layers=6, n_groups=2, hidden=64, width=32, max_think=400))
    with torch.no_grad():  # random input weights around the initial median (120 tokens)
        p.think_mu.weight.normal_(0, 0.05)
    return p.eval()


@pytest.mark.parametrize("rule", ["quantile", "triage"])
def test_allowance_is_monotone_in_the_budget_for_every_prompt(rule):
    p = _think_policy()
    if rule == "triage":  # the budget's input-blind cap for prompts likely to finish within it, 0 for the rest
        p.config.think_triage = [float(p.think_mu.bias.detach()), 0.5, 0.6]
    pooled = torch.randn(50, 64) * 3  # (N, H) a test set of prompts
    grid = [i / 20 for i in range(1, 21)]
    per_b = [p.decisions(pooled, [Budget(think=b)] * 50) for b in grid]
    moved = 0
    for i in range(50):
        allow = [ds[i].think_tokens for ds in per_b]
        assert allow[-1] is None  # b_think = 1: no cap (the dense model)
        assert all(a <= b for a, b in zip(allow[:-2], allow[1:-1]))  # never more tokens at a lower budget
        moved += allow[0] < allow[-2]
    assert moved >= 40  # and the budget does move it (a few rows sit at 0 or max_think throughout)
    assert len({ds[i].think_tokens for ds in per_b[9:10] for i in range(50)}) > 1  # input-aware at one budget
    assert all(d.layer_fraction == 1.0 for d in per_b[5])  # the think axis alone never changes the layers
    if rule == "triage":  # at one budget: one cap, and some prompts answer at once
        assert len({ds[i].think_tokens for ds in per_b[9:10] for i in range(50)}) == 2


def test_think_fit_learns_input_dependent_lengths():
    from l2a.think import fit

    torch.manual_seed(0)
    p = GatePolicy(GateConfig(n_layers=6, n_groups=2, hidden=64, width=32))
    x = torch.randn(300, 64)  # (N, H) pooled prompts
    p.fit_input(x)
    n_tok = torch.randint(20, 200, (300,))  # prompt lengths
    log_len = 3 + 0.5 * x[:, 0] + 0.4 * n_tok.float().log() + 0.1 * torch.randn(300)  # harder, longer prompts: longer
    lengths = torch.exp(log_len).round().clamp(0, 2000)
    train = torch.arange(300) < 240
    rep = fit(p, x, lengths, train, n_tok)
    assert rep["nll_test"] < rep["nll_test_input_blind"] - 0.3
    assert rep["spearman_mu_test"] > 0.6  # an input-blind head scores ~0
    cov = rep["coverage"]
    assert cov["0.3"] <= cov["0.5"] <= cov["0.7"] <= cov["0.9"] and cov["0.9"] > 0.7
    allow = rep["mean_allowance"]
    assert allow["0.3"] < allow["0.5"] < allow["0.7"] < allow["0.9"]


def test_think_fit_uses_the_prompt_only_where_it_beats_a_fixed_cap():
    from l2a.think import cap_gain, fit

    torch.manual_seed(0)
    x = torch.randn(300, 64)
    n_tok = torch.randint(20, 200, (300,))
    train = torch.arange(300) < 240
    for signal in (1.0, 0.0):  # predictable lengths, then lengths unrelated to the prompt
        p = GatePolicy(GateConfig(n_layers=6, n_groups=2, hidden=64, width=32))
        p.fit_input(x)
        target = torch.exp(4 + signal * 0.6 * x[:, 0] + 0.3 * torch.randn(300)).round()
        thinks = target + torch.randint(0, 30, (300,))  # the chain runs on past its sufficient length
        rep = fit(p, x, target, train, n_tok, thinks)
        assert rep["selected_by"] == "cap_gain"
        if signal:  # per-prompt allowances keep more answers than any input-blind policy at the same tokens
            assert rep["alpha"] != "inf (input-blind)" and rep["cap_gain_test"] > 0.05
        else:  # nothing to learn from the prompt: no real gain over caps and their mixtures
            assert rep["cap_gain_test"] < 0.03
    # the criterion itself: triage by a perfect predictor keeps more than a cap at equal tokens, an inverted one less
    t = torch.tensor([10.0, 20, 40, 80, 160, 320]).double()
    th, y = t + 5, torch.log(t + 8)
    rule = [float(y.mean()), float(y.std()), 0.5]
    good = cap_gain(y, 0.05, t, th, rule)
    bad = cap_gain(y.flip(0), 0.05, t, th, rule)
    assert good > 0.1 and bad < 0


def test_train_think_end_to_end_on_a_tiny_model(tmp_path):
    from conftest import write_math

    from l2a.checkpoint import load_gates, save_gates
    from l2a.think import ThinkConfig, train_think

    m, tok = _gm(n_layers=6)
    p = GatePolicy(GateConfig(n_layers=6, n_groups=2, hidden=64, width=32))
    save_gates(p, tmp_path / "gates", m.hf)
    data = tmp_path / "train.jsonl"
    write_math(data, n=24)
    cfg = ThinkConfig(gates=str(tmp_path / "gates"), out=str(tmp_path / "out"), data=str(data), problems=12,
                      max_new_tokens=20, batch_size=4, dtype="float32")
    summary = train_think(cfg, model=m, progress=False)
    probes = [json.loads(x) for x in (tmp_path / "out" / "probes.jsonl").read_text().splitlines()]
    assert len(probes) == 12 and summary["probed"] == 12
    for r in probes:
        if r["target"] is not None:
            assert 0 <= r["target"] <= r["think"] <= r["generated"]
            assert all(r["cuts"][str(k)] == r["dense_answer"] for k in map(int, r["cuts"]) if k >= r["target"] and k < r["think"])
    fitted = load_gates(tmp_path / "out", m.hf)
    assert not torch.equal(fitted.think_mu.bias, p.think_mu.bias)  # the head moved
    assert all(torch.equal(a, b) for (k, a), (_, b) in zip(fitted.state_dict().items(), p.state_dict().items())
               if not k.startswith("think") and k != "length_stats")  # nothing else did
    # resumes: a second run probes nothing new
    again = train_think(cfg, model=m, progress=False)
    assert again["probed"] == 12 and len((tmp_path / "out" / "probes.jsonl").read_text().splitlines()) == 12


def test_train_think_without_gates_writes_a_think_only_artifact(tmp_path):
    """A model with no trained gates gets a think head whose untrained layer/group axes refuse budgets < 1."""
    from conftest import write_math

    from l2a import Budget
    from l2a.checkpoint import load_gates
    from l2a.think import ThinkConfig, train_think

    m, tok = _gm(n_layers=6)
    data = tmp_path / "train.jsonl"
    write_math(data, n=24)
    cfg = ThinkConfig(model="tiny-without-gates", out=str(tmp_path / "out"), data=str(data), problems=12,
                      max_new_tokens=20, batch_size=4, dtype="float32")
    train_think(cfg, model=m, progress=False)
    policy = load_gates(tmp_path / "out", m.hf)
    assert policy.config.untrained == ["layers", "heads"]
    assert float(policy.input_std.min()) > 0 and not torch.all(policy.input_mean == 0)  # input standardisation fit
    m.policy = policy
    ids = torch.tensor([[5, 6, 7, 8]])
    (d,) = m.decide(ids, Budget(layers=1.0, heads=1.0, think=0.5))
    assert all(d.layers) and d.think_tokens is not None
    for bad in (Budget(layers=0.5, heads=1.0, think=1.0), Budget(layers=1.0, heads=0.5, think=1.0), Budget(0.6)):
        with pytest.raises(ValueError, match="no trained"):
            m.decide(ids, bad)
    with pytest.raises(ValueError, match="unknown prompt style 'terse'; valid: steps, concise"):
        ThinkConfig(prompt="terse")
