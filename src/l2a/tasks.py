"""tasks: how one benchmark item is prompted, run on a GatedModel and scored.

The tasks, in the registry `TASKS` (errors list the names):

- ``gsm8k``: generative math. Chat prompt through the tokenizer's chat template (plain
  ``"Question: ...\\nAnswer:"`` when it has none), greedy chain of thought, answer extraction (`#### N`,
  else ``\\boxed{N}``, else the last number), normalised exact match. ``gsm8k-budget`` is the same with
  budget-aware prompting: rows with a think allowance are asked for a concise chain (`INSTRUCTIONS`) and
  decided again on that prompt; ``gsm8k-concise`` asks every row for it (the uncapped reference).
- ``gsm8k-loglik``: the prefill-only way to score math at scale: teacher-forced log-likelihood of the
  reference solution given the same prompt. Per item: total logprob and token count (``nll`` in the
  record is total NLL / total tokens); its ``accuracy`` is *teacher-forced answer match*: every
  non-whitespace token of the final number after ``####`` is the greedy argmax given the reference before it.
- ``mc``: multiple choice by log-likelihood: ``"Question: q\\nAnswer:"`` + ``" " + choice``, summed logprob of
  the choice tokens. ``accuracy`` = argmax of the raw sum; ``acc_norm`` = argmax of the sum divided by the
  number of *characters* of the choice (lm-eval's acc_norm). WinoGrande rows (empty question) score the
  whole sentence after a single prefix token (eos, as lm-eval's prefix token).

Each row's decision is made once from its question prompt and reused for all its choices / generated
tokens (DESIGN decision 1). Batches are left-padded; every row carries its own decision. Scoring tasks run
an item's choices in one forward (`routed_logprobs`): the learned gates (a decider with `score`) decide
inside that forward, their router layers reading the prompt positions, so the prompt runs once; other
deciders decide on the prompts (`decide(ids, mask)`), then score. Generation decides on the prompt first
(its cost is the decode). This module does not time anything or aggregate across items (`evaluate.py`
does) and does not choose decisions.
"""

from __future__ import annotations

import re
from decimal import Decimal
from dataclasses import dataclass, field
from typing import Iterator

import torch

from . import data
from .decision import GateDecision
from .scoring import Decide, batches, decide_on, encode, left_pad, pad_token, prefix_token, routed_logprobs


@dataclass
class ItemResult:
    """What one item produced; evaluate.py aggregates these."""

    score: float  # 1.0 / 0.0 (or the task's primary metric for the item)
    decision: GateDecision  # the decision the item ran with
    context: int  # tokens in the item's sequence (mean over choices for mc): cost is modeled at this length
    tokens: int  # tokens counted by tokens_per_s: generated (gsm8k) or processed (scoring tasks)
    new_tokens: int = 0  # think tokens (generated before the answer marker), 0 for scoring tasks
    metrics: dict = field(default_factory=dict)  # task extras (acc_norm, logprob, n_tokens, ...)
    kv_bytes_measured: int | None = None  # RowCache bytes held for the row after generation


# ---- answers -------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")  # 1,234.5 | 1234 | -7


def normalize_number(text: str | None) -> str | None:
    """Canonical form of the first number in `text`: no commas/`$`/trailing `.`, `18.0` -> `18`, `-0` -> `0`."""
    if text is None:
        return None
    m = _NUMBER.search(text.replace("$", ""))
    if m is None:
        return None
    d = Decimal(m.group(0).replace(",", ""))
    if d == d.to_integral_value():
        return str(int(d))  # int(Decimal("-0")) == 0
    return format(d.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """The model's final answer: after the last `####`, else the last `\\boxed{}`, else the last number."""
    if "####" in text:
        got = normalize_number(text.rsplit("####", 1)[1].split("\n", 1)[0])
        if got is not None:
            return got
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    if boxed:
        got = normalize_number(boxed[-1])
        if got is not None:
            return got
    numbers = _NUMBER.findall(text.replace("$", ""))
    return normalize_number(numbers[-1]) if numbers else None


# The instruction after the question (chat prompts). `concise` is the reasoning axis's shorter style: measured
# on Qwen2.5-Coder-1.5B, the `steps` prompt draws long Python-code chains and a numeric limit in the prompt
# ("at most 100 tokens") is ignored, while this instruction halves the chain (docs/results/think.md).
INSTRUCTIONS = {
    "steps": "Solve it step by step, then give the final number on the last line as '#### N'.",
    "concise": "Solve it step by step in a few short sentences of plain words (no code), "
               "then give the final number on the last line as '#### N'.",
}


def check_style(style: str) -> str:
    """`style` if it names an instruction of INSTRUCTIONS, else a ValueError listing them."""
    if style not in INSTRUCTIONS:
        raise ValueError(f"unknown prompt style {style!r}; valid: {', '.join(INSTRUCTIONS)}")
    return style


def math_prompt(tok, question: str, style: str = "steps") -> list[int]:
    """Token ids of the math prompt: chat template when the tokenizer has one, else plain (`style` is the
    instruction, a key of INSTRUCTIONS; plain prompts have none)."""
    check_style(style)
    if getattr(tok, "chat_template", None):
        content = f"{question}\n{INSTRUCTIONS[style]}"
        text = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
        return encode(tok, text)
    return encode(tok, f"Question: {question}\nAnswer:", special=True)


def solution_ids(tok, answer: str) -> list[int]:
    """Token ids of a GSM8K worked answer, its calculator annotations (`<<48/2=24>>`) removed."""
    return encode(tok, re.sub(r"<<[^>]*>>", "", answer))


# ---- tasks -------------------------------------------------------------------------------------------


class _MathTask:
    """GSM8K-style rows (`{"question", "answer": "... #### N"}`): a file, a data root, the hub, or generated."""

    data_format = "math"

    def load(self, path=None):
        return data.load_math(path)


class GSM8K(_MathTask):
    """Generative math: greedy chain of thought, extracted final number, exact match."""

    name = "gsm8k"
    style = "steps"  # prompt style of every row
    capped_style = None  # budget-aware prompting: the style of rows with a think allowance (None: `style`)
    dense_task = "gsm8k"  # the task whose dense line this one's equals (uncapped rows are prompted alike)
    family = "gsm8k"  # tasks of one family score the same items alike: the report plots them together

    def run(self, model, rows, decide: Decide, batch_size: int = 8, max_new_tokens: int = 256) -> Iterator[list[ItemResult]]:
        """Rows whose decision carries a think allowance are budget-forced (reasoning.py): the allowance is
        clipped so marker and answer fit in `max_new_tokens`, the cap every row (capped or not) shares."""
        from .reasoning import AnswerFormat, think_length

        tok = model.tokenizer
        pad = pad_token(tok)
        eos = model.hf.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos]))
        fmt = model.answer_format or AnswerFormat.for_tokenizer(tok)
        reserve = len(encode(tok, fmt.marker)) + fmt.answer_tokens
        for idx in batches(len(rows), batch_size):
            prompts = [math_prompt(tok, rows[i]["question"], self.style) for i in idx]
            ds = decide_on(model, decide, prompts, pad)
            capped = [j for j, d in enumerate(ds) if d.think_tokens is not None]
            if self.capped_style is not None and capped:  # re-prompt capped rows, decide on what they run
                for j in capped:
                    prompts[j] = math_prompt(tok, rows[idx[j]]["question"], self.capped_style)
                for j, d in zip(capped, decide_on(model, decide, [prompts[j] for j in capped], pad)):
                    ds[j] = d
            ids, mask = left_pad(prompts, pad, model.device)  # (B, T)
            allow = [None if d.think_tokens is None else max(0, min(d.think_tokens, max_new_tokens - reserve)) for d in ds]
            out = model.generate(ids, attention_mask=mask, decisions=ds, max_new_tokens=max_new_tokens,
                                 thinking_token_budget=allow)
            proc = getattr(model, "last_think", None)
            forced = proc.forced_at if proc is not None else [None] * len(ds)
            new = out[:, ids.shape[1]:].tolist()  # (B, N)
            kv = model.last_cache.row_kv_bytes() if getattr(model, "last_cache", None) is not None else [None] * len(ds)
            results = []
            for j, i in enumerate(idx):
                gen = new[j]
                n = next((t + 1 for t, x in enumerate(gen) if x in eos_ids), len(gen))
                text = tok.decode(gen[:n], skip_special_tokens=True).split("\nQuestion:", 1)[0]
                pred, gold = extract_answer(text), normalize_number(data.target(rows[i]))
                results.append(ItemResult(
                    score=float(pred is not None and pred == gold), decision=ds[j], context=len(prompts[j]) + n,
                    tokens=n, new_tokens=think_length(tok, gen, eos_ids, fmt),
                    metrics={"prediction": pred, "target": gold, "forced": forced[j] is not None},
                    kv_bytes_measured=kv[j],
                ))
            yield results

    def aggregate(self, items: list[ItemResult]) -> dict:
        return {"forced": sum(r.metrics["forced"] for r in items) / max(1, len(items))}


class GSM8KConcise(GSM8K):
    """`gsm8k` with the concise instruction for every row (the reference for budget-aware prompting)."""

    name = "gsm8k-concise"
    style = "concise"
    dense_task = "gsm8k-concise"


class GSM8KBudget(GSM8K):
    """`gsm8k` with budget-aware prompting: rows with a think allowance get the concise instruction (and are
    forced at their allowance); uncapped rows, hence the dense line, are prompted exactly as in `gsm8k`."""

    name = "gsm8k-budget"
    capped_style = "concise"


class GSM8KLoglik(_MathTask):
    """Teacher-forced log-likelihood of the reference solution (prefill only, no generation). Score: every
    non-whitespace token of the final number after ``####`` is the greedy argmax given the reference before
    it. Whitespace-only tokens are not scored: a tokenizer may split " 18" into " ", "1", "8", and a model
    that would write " 18" as " 1", "8" misses the bare " " whatever its digits (metric version 2; version 1
    scored every token and was near 0 for SmolLM2, whose dense model predicts " N" after "####" there)."""

    name = "gsm8k-loglik"
    metric_version = 2  # lines scored by another version are scored again (results.finished)

    def run(self, model, rows, decide: Decide, batch_size: int = 8, max_new_tokens: int = 256) -> Iterator[list[ItemResult]]:
        tok = model.tokenizer
        pad = pad_token(tok)
        plain = not getattr(tok, "chat_template", None)
        for idx in batches(len(rows), batch_size):
            prompts = [math_prompt(tok, rows[i]["question"]) for i in idx]
            seqs, conts, scored_at = [], [], []
            for p, i in zip(prompts, idx):
                head, number = rows[i]["answer"].rsplit("####", 1)
                head_ids = encode(tok, (" " if plain else "") + head + "####")
                num_ids = encode(tok, number)  # the final answer's tokens (" 18")
                seqs.append(p + head_ids + num_ids)
                conts.append(len(head_ids) + len(num_ids))
                scored_at.append(torch.tensor([bool(tok.decode([t]).strip()) for t in num_ids], dtype=torch.bool))  # not whitespace
            scored, ds = routed_logprobs(model, decide, seqs, conts, [len(p) for p in prompts], list(range(len(seqs))), pad)
            results = []
            for j, (total, lp, hit) in enumerate(scored):
                at = scored_at[j]  # (answer tokens,) bool
                answer_hit = bool(at.any() and hit[-len(at):][at].all())
                results.append(ItemResult(
                    score=float(answer_hit), decision=ds[j], context=len(seqs[j]), tokens=len(seqs[j]),
                    metrics={"logprob": total, "n_tokens": conts[j], "token_acc": float(hit.float().mean())},
                ))
            yield results

    @staticmethod
    def per_item(items: list[ItemResult]) -> dict:
        """Each item's summed NLL of the reference and its token count (paired comparisons of NLL)."""
        return {"item_nll": [round(-r.metrics["logprob"], 4) for r in items], "item_tokens": [r.metrics["n_tokens"] for r in items]}

    def aggregate(self, items: list[ItemResult]) -> dict:
        n_tok = sum(r.metrics["n_tokens"] for r in items)
        return {
            "nll": -sum(r.metrics["logprob"] for r in items) / max(1, n_tok),  # per token, over all items
            "token_acc": sum(r.metrics["token_acc"] for r in items) / max(1, len(items)),
        }


class MultipleChoice:
    """Multiple choice by summed choice log-likelihood; raw (acc) and per-character (acc_norm)."""

    name = "mc"
    data_format = "mc"

    def load(self, path=None):
        return data.load("mc", path)

    @staticmethod
    def _context(tok, row) -> tuple[list[int], list[list[int]], int]:
        """(context ids, continuation ids per choice, length of the decision prompt in each choice's sequence)."""
        if row["question"]:
            ctx = encode(tok, f"Question: {row['question']}\nAnswer:", special=True)
            return ctx, [encode(tok, " " + c) for c in row["choices"]], len(ctx)
        # WinoGrande: whole sentences after one prefix token; decide on their shared start (before the blank).
        conts = [encode(tok, c) for c in row["choices"]]
        return [prefix_token(tok)], conts, 1 + _common_prefix(conts)

    @classmethod
    def pair(cls, tok, row) -> tuple[list[int], list[int]]:
        """(decision prompt ids, the rest of the correct choice's ids): what the gates route on, then what
        follows it in the correct sequence (the answer tokens a teacher-forced loss scores)."""
        ctx, conts, plen = cls._context(tok, row)
        seq = ctx + conts[row["answer"]]
        return seq[:plen], seq[plen:]

    def run(self, model, rows, decide: Decide, batch_size: int = 8, max_new_tokens: int = 0) -> Iterator[list[ItemResult]]:
        """Items are scored whole: all choices of an item run in one forward (up to `batch_size` rows per
        forward, items of similar length together), so the item's one decision is made in that pass."""
        tok = model.tokenizer
        pad = pad_token(tok)
        for idx in batches(len(rows), batch_size):
            built = [self._context(tok, rows[i]) for i in idx]
            size = [sum(len(built[j][0]) + len(c) for c in built[j][1]) for j in range(len(built))]
            order = sorted(range(len(built)), key=lambda j: -size[j] / len(built[j][1]))  # less padding
            sums, decision = {}, {}
            for group in _pack([len(built[j][1]) for j in order], batch_size):
                items = [order[g] for g in group]
                seqs, conts, plens, owner, keys = [], [], [], [], []
                for j in items:
                    ctx, choices, plen = built[j]
                    first = len(seqs)
                    for c, cont in enumerate(choices):
                        seqs.append(ctx + cont)
                        conts.append(len(cont))
                        plens.append(plen)
                        owner.append(first)
                        keys.append((j, c))
                scored, ds = routed_logprobs(model, decide, seqs, conts, plens, owner, pad)
                for key, (total, _, _), d in zip(keys, scored, ds):
                    sums[key] = total
                    decision[key[0]] = d
            results = []
            for j, i in enumerate(idx):
                choices, gold = rows[i]["choices"], rows[i]["answer"]
                raw = [sums[j, c] for c in range(len(choices))]
                norm = [s / len(ch) for s, ch in zip(raw, choices)]
                lengths = [len(built[j][0]) + len(x) for x in built[j][1]]
                results.append(ItemResult(
                    score=float(_argmax(raw) == gold), decision=decision[j], context=round(sum(lengths) / len(lengths)),
                    tokens=sum(lengths), metrics={"acc_norm": float(_argmax(norm) == gold), "logprobs": raw},
                ))
            yield results

    def aggregate(self, items: list[ItemResult]) -> dict:
        return {"acc_norm": sum(r.metrics["acc_norm"] for r in items) / max(1, len(items))}


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda k: xs[k])  # first of ties, deterministic


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest token prefix all `seqs` share."""
    n = 0
    for toks in zip(*seqs):
        if len(set(toks)) != 1:
            break
        n += 1
    return n


def _pack(sizes: list[int], limit: int) -> list[list[int]]:
    """Consecutive indices of `sizes` in groups of total size <= `limit` (an item larger than it goes alone)."""
    groups, cur, total = [], [], 0
    for i, n in enumerate(sizes):
        if cur and total + n > limit:
            groups.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += n
    return groups + [cur] if cur else groups


TASKS = {"gsm8k": GSM8K, "gsm8k-budget": GSM8KBudget, "gsm8k-concise": GSM8KConcise, "gsm8k-loglik": GSM8KLoglik,
         "mc": MultipleChoice}


def get_task(name):
    """A task instance by name (or the task itself); ValueError lists the valid names."""
    if not isinstance(name, str):
        return name
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]()
