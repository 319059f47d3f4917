"""mix: the second source of training examples, beside the task's own (`l2a train --train-text F --warm-text N`).

By default windows of generic prose (prose.py: the standard library's docstrings). With `mix_mc` (`--mix-mc
FILE ...`), the (question, correct choice) pairs of multiple-choice sets instead, cut at the prompt the
gates decide on in evaluation (tasks.MultipleChoice): prompts whose cheap layers differ from GSM8K's, so an
input-aware router has a reason to route them differently. Sets trained on this way are no longer
held-out evaluation data for those gates; evaluate on the others.

Either way the examples come in one seeded order. Its first `max(HELD, warm_text)` are never trained on:
the greedy warm-start search takes its `warm_text` from the front, and MC pairs join the calibration table's
prompts from there (`calibration_pairs`).
"""

from __future__ import annotations

import random

HELD = 64  # second-source examples never trained on (the warm-start search's come from these)


def ordered(tok, seed: int, mc: list | tuple = ()) -> list[tuple[list[int], list[int]]]:
    """Every second-source example [(prompt ids, answer ids)] in the seeded order."""
    if not mc:
        from .prose import docstrings, windows

        return windows(tok, docstrings(), 10**9, seed)
    from .data import load_mc
    from .tasks import MultipleChoice

    out = []
    for path in mc:
        for row in load_mc(path)[0]:
            prompt, answer = MultipleChoice.pair(tok, row)
            if answer:
                out.append((prompt, answer))
    random.Random(seed).shuffle(out)
    return out


def search_pairs(cfg, tok) -> list[tuple[list[int], list[int]]]:
    """The `cfg.warm_text` examples the greedy warm-start search adds to the task's."""
    return ordered(tok, cfg.seed, cfg.mix_mc)[: cfg.warm_text] if cfg.warm_text else []


def training_pairs(cfg, tok) -> list[tuple[list[int], list[int]]]:
    """The examples training draws from ([] unless cfg.train_text): the seeded order after the held-out front,
    those that fit cfg.max_len."""
    if not cfg.train_text:
        return []
    if not cfg.mix_mc:
        from .prose import ANSWER, PROMPT

        if PROMPT + ANSWER > cfg.max_len:
            raise ValueError(f"train_text needs max_len >= {PROMPT + ANSWER} (a prose window's tokens), got {cfg.max_len}")
    out = [(p, a) for p, a in ordered(tok, cfg.seed, cfg.mix_mc)[max(HELD, cfg.warm_text) :] if len(p) + len(a) <= cfg.max_len]
    if not out:
        raise ValueError(f"no second-source examples left to train on after the first {max(HELD, cfg.warm_text)}")
    return out


def calibration_pairs(cfg, tok) -> list[tuple[list[int], list[int]]]:
    """The second-source examples the calibration table is fit on beside the task's held-out prompts
    (calibration.py), so a requested budget is met on both kinds of prompt the gates were trained for, in the
    training share: round(calib_prompts * train_text / (1 - train_text)) of them. None unless the gates train
    on MC pairs (prose windows are a regulariser, not traffic) and cfg.calib_mix. They come from the held-out
    front of the order: those the warm-start search did not use first, then those it did."""
    if not (cfg.mix_mc and cfg.train_text and cfg.calib_prompts and cfg.calib_mix):
        return []
    front = ordered(tok, cfg.seed, cfg.mix_mc)[: max(HELD, cfg.warm_text)]
    front = front[cfg.warm_text :] + front[: cfg.warm_text]
    return front[: round(cfg.calib_prompts * cfg.train_text / (1 - cfg.train_text))]
