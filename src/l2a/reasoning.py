"""Budget forcing for the reasoning axis: when a row's think allowance is spent, force the answer.

A transformers `LogitsProcessor` (s1-style budget forcing, DESIGN decision 5): each row of a batch has
its own allowance (None = uncapped). When a row has generated `allowance` tokens without emitting the
answer marker itself, the marker's tokens are forced one by one (e.g. "\\n#### " for GSM8K prompts, or
a closing think tag), then the answer may run for at most `answer_tokens` tokens before EOS is forced.
With `numeric=True` the forced answer is restricted to number tokens until one digit is written, so the
output always holds a parseable final number. Not here: choosing the allowance (the gates' think head)
or scoring answers (tasks.py). `AnswerFormat` says what to force for a tokenizer, `think_processor` builds
the processor for one `generate` call (GatedModel.generate does this from each row's decision or an
explicit `thinking_token_budget`), and `think_length` counts a row's think tokens afterwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import LogitsProcessor

from .scoring import encode


@dataclass(frozen=True)
class AnswerFormat:
    """What ends thinking: the text forced when the allowance is spent, and the text that shows the model
    reached its answer by itself. GSM8K-style prompts (tasks.math_prompt) ask for '#### N'."""

    marker: str = "\n#### "  # forced, token by token, when a row's allowance is spent
    detect: str = "####"  # a row that writes this has started its answer: it is never forced
    answer_tokens: int = 16  # answer tokens allowed after a forced marker, then EOS
    numeric: bool = True  # the forced answer starts with a number token (always parseable)

    @classmethod
    def for_tokenizer(cls, tok) -> "AnswerFormat":
        """A closing think tag when the tokenizer has one as a single token, else the GSM8K marker."""
        if "</think>" in tok.get_vocab():
            return cls(marker="</think>\n\n", detect="</think>", answer_tokens=64, numeric=False)
        return cls()


_DIGITS = re.compile(r"-?\d+")


def number_token_ids(tok) -> list[int]:
    """Ids of tokens that are a (possibly negative) number, with or without a leading space marker."""
    out = []
    for tid in range(len(tok)):
        piece = tok.convert_ids_to_tokens(tid)
        if isinstance(piece, str) and _DIGITS.fullmatch(piece.lstrip("Ġ▁ ")):
            out.append(tid)
    return out


def think_processor(tok, allowances: Sequence[int | None], prompt_len: int, eos_id: int,
                    fmt: AnswerFormat | None = None) -> "ThinkBudgetProcessor":
    """The budget-forcing processor for one generate call over left-padded prompts of `prompt_len`."""
    fmt = fmt or AnswerFormat.for_tokenizer(tok)
    numeric = None
    if fmt.numeric:
        cache = getattr(tok, "_l2a_number_ids", None)
        if cache is None:
            cache = number_token_ids(tok)
            try:
                tok._l2a_number_ids = cache  # a vocabulary scan per call would cost ~0.1 s
            except AttributeError:
                pass
        numeric = cache
    return ThinkBudgetProcessor(allowances, prompt_len, encode(tok, fmt.marker), eos_id,
                                answer_tokens=fmt.answer_tokens, numeric_ids=numeric, detect=encode(tok, fmt.detect))


def add_forcing(model, ds, override, prompt_len: int, generate_kwargs: dict) -> "ThinkBudgetProcessor | None":
    """Add a budget-forcing processor to `generate_kwargs` when any row of `model.generate` has an
    allowance: `override` (an int, or one per row; None = the row's decision's `think_tokens`) wins."""
    B = len(ds)
    if override is None or isinstance(override, int):
        override = [override] * B
    override = list(override)
    if len(override) != B:
        raise ValueError(f"got {len(override)} thinking_token_budget values for a batch of {B} rows")
    allowances = [o if o is not None else d.think_tokens for o, d in zip(override, ds)]
    if all(a is None for a in allowances):
        return None
    if model.tokenizer is None:
        raise ValueError("a think allowance needs the model's tokenizer (GatedModel(hf, tokenizer=...))")
    from transformers import LogitsProcessorList

    eos = model.hf.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    eos = model.tokenizer.eos_token_id if eos is None else eos
    if eos is None:
        raise ValueError("a think allowance needs an EOS token id in the model's generation_config")
    proc = think_processor(model.tokenizer, allowances, prompt_len, int(eos), model.answer_format)
    generate_kwargs["logits_processor"] = LogitsProcessorList([*(generate_kwargs.get("logits_processor") or []), proc])
    return proc


def think_length(tok, generated: Sequence[int], eos_ids, fmt: AnswerFormat | None = None) -> int:
    """Think tokens of one generated row: the tokens before the answer marker (whitespace before it
    excluded), or all tokens up to EOS when the row never answered. Found in the decoded text, so it does
    not matter whether the marker was forced or written, nor how it was tokenized."""
    fmt = fmt or AnswerFormat.for_tokenizer(tok)
    gen = list(generated)
    gen = gen[: next((i for i, t in enumerate(gen) if t in eos_ids), len(gen))]
    text = tok.decode(gen)
    pos = text.find(fmt.detect)
    if pos < 0:
        return len(gen)
    pos = len(text[:pos].rstrip())
    lo, hi = 0, len(gen)  # largest j with len(decode(gen[:j])) <= pos (prefix lengths grow with j)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tok.decode(gen[:mid])) <= pos:
            lo = mid
        else:
            hi = mid - 1
    return lo


class ThinkBudgetProcessor(LogitsProcessor):
    """Per-row think allowances for one `generate` call over prompts of `prompt_len` tokens."""

    def __init__(self, allowances: Sequence[int | None], prompt_len: int, marker: Sequence[int], eos_id: int,
                 answer_tokens: int = 16, numeric_ids: Sequence[int] | None = None,
                 detect: Sequence[int] | None = None):
        if not marker:
            raise ValueError("the answer marker needs at least one token")
        for a in allowances:
            if a is not None and (isinstance(a, bool) or not isinstance(a, int) or a < 0):
                raise ValueError(f"think allowances must be non-negative ints or None, got {a!r}")
        self.allowances = list(allowances)  # (B,) tokens of thinking before the marker is forced
        self.prompt_len = prompt_len  # generated tokens start here (left-padded batch: same for all rows)
        self.marker = list(marker)  # token ids forced when the allowance is spent
        self.detect = list(detect) if detect else self.marker  # written by the row itself: no forcing
        self.eos_id = eos_id
        self.answer_tokens = answer_tokens  # answer tokens allowed after a forced marker
        self.numeric = None if numeric_ids is None else torch.tensor(sorted(set(numeric_ids)))
        self.forced_at: list[int | None] = [None] * len(allowances)  # where forcing began, per row
        self._done = [False] * len(allowances)  # answered by itself or finished: never touched again

    def _force(self, scores: torch.Tensor, row: int, token: int) -> None:
        keep = scores[row, token].clone()
        scores[row] = float("-inf")
        scores[row, token] = keep if torch.isfinite(keep) else 0.0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # Called once per step, so each row's state is updated from the newest tokens only: O(1) per row
        # per step (scanning whole sequences cost ~10% of decode time at batch 16).
        n = input_ids.shape[1] - self.prompt_len  # tokens generated so far (same for every row)
        k = min(n, len(self.detect))
        tail = input_ids[:, input_ids.shape[1] - k :].tolist() if k else [[] for _ in self.allowances]  # (B, k)
        for row, allowance in enumerate(self.allowances):
            if allowance is None or self._done[row]:
                continue
            if n and tail[row][-1] == self.eos_id:  # finished (HF pads it from here)
                self._done[row] = True
                continue
            start = self.forced_at[row]
            if start is None:
                if k == len(self.detect) and tail[row] == self.detect:  # reached its answer by itself
                    self._done[row] = True
                    continue
                if n < allowance:
                    continue  # still thinking
                self.forced_at[row] = start = n
            j = n - start  # tokens since forcing began
            if j < len(self.marker):
                self._force(scores, row, self.marker[j])
                continue
            answered = j - len(self.marker)  # answer tokens written after the forced marker
            if answered >= self.answer_tokens:
                self._force(scores, row, self.eos_id)
            elif self.numeric is not None and answered == 0:
                # the first answer token must be a number token: the answer always parses
                mask = torch.full_like(scores[row], float("-inf"))
                mask[self.numeric] = 0.0
                scores[row] = scores[row] + mask
        return scores
