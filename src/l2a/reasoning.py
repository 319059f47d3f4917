"""Budget forcing for the reasoning axis: when a row's think allowance is spent, force the answer.

A transformers `LogitsProcessor` (s1-style budget forcing, DESIGN decision 5): each row of a batch has
its own allowance (None = uncapped). When a row has generated `allowance` tokens without emitting the
answer marker itself, the marker's tokens are forced one by one (e.g. "\\n#### " for GSM8K prompts, or
a closing think tag), then the answer may run for at most `answer_tokens` tokens before EOS is forced.
With `numeric=True` the forced answer is restricted to number tokens until one digit is written, so the
output always holds a parseable final number. Not here: choosing the allowance (the gates' think head)
or scoring answers (tasks.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import LogitsProcessor


def _find(seq: list[int], pattern: list[int]) -> int:
    """Index of the first occurrence of `pattern` in `seq`, or -1."""
    n = len(pattern)
    for i in range(len(seq) - n + 1):
        if seq[i : i + n] == pattern:
            return i
    return -1


class ThinkBudgetProcessor(LogitsProcessor):
    """Per-row think allowances for one `generate` call over prompts of `prompt_len` tokens."""

    def __init__(self, allowances: Sequence[int | None], prompt_len: int, marker: Sequence[int], eos_id: int,
                 answer_tokens: int = 16, numeric_ids: Sequence[int] | None = None):
        if not marker:
            raise ValueError("the answer marker needs at least one token")
        for a in allowances:
            if a is not None and (isinstance(a, bool) or not isinstance(a, int) or a < 0):
                raise ValueError(f"think allowances must be non-negative ints or None, got {a!r}")
        self.allowances = list(allowances)  # (B,) tokens of thinking before the marker is forced
        self.prompt_len = prompt_len  # generated tokens start here (left-padded batch: same for all rows)
        self.marker = list(marker)  # token ids forced when the allowance is spent
        self.eos_id = eos_id
        self.answer_tokens = answer_tokens  # answer tokens allowed after a forced marker
        self.numeric = None if numeric_ids is None else torch.tensor(sorted(set(numeric_ids)))
        self.forced_at: list[int | None] = [None] * len(allowances)  # where forcing began, per row

    def _force(self, scores: torch.Tensor, row: int, token: int) -> None:
        keep = scores[row, token].clone()
        scores[row] = float("-inf")
        scores[row, token] = keep if torch.isfinite(keep) else 0.0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        gen = input_ids[:, self.prompt_len :].tolist()  # (B, n) generated so far
        for row, allowance in enumerate(self.allowances):
            if allowance is None:
                continue
            n = len(gen[row])
            start = self.forced_at[row]
            if start is None:
                if n < allowance or _find(gen[row], self.marker) >= 0:
                    continue  # still thinking, or the row reached its answer by itself
                self.forced_at[row] = start = n
            j = n - start  # tokens since forcing began
            if j < len(self.marker):
                self._force(scores, row, self.marker[j])
                continue
            answer = gen[row][start + len(self.marker) :]
            if self.eos_id in answer:
                continue
            if len(answer) >= self.answer_tokens:
                self._force(scores, row, self.eos_id)
            elif self.numeric is not None and not answer:
                # the first answer token must be a number token: the answer always parses
                mask = torch.full_like(scores[row], float("-inf"))
                mask[self.numeric] = 0.0
                scores[row] = scores[row] + mask
        return scores
