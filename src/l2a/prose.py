"""Generic text that every machine has: the Python standard library's docstrings (English prose) and
source (Python code), cut into (prompt, continuation) token windows. No downloads, no dataset files.

Used to search the greedy-KL warm-start order on more than the task's own text (`l2a train --warm-text N`),
to train on besides the task's text (`l2a train --train-text F`) and by `scripts/domain_orders.py`. The
text depends on the Python version (3.11 here) and on which standard modules import on the platform.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import os
import random
import sys
import sysconfig
import warnings

PROMPT, ANSWER = 48, 112  # tokens of a window's prompt and continuation
_SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}  # side effects or GUI


def docstrings(min_chars: int = 600) -> list[str]:
    """Docstrings of at least `min_chars` of the standard modules and their public classes and functions."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(sys.stdlib_module_names):
            if name.startswith("_") or name in _SKIP:
                continue
            try:
                mod = importlib.import_module(name)
            except Exception:  # noqa: BLE001 (platform-specific modules)
                continue
            objs = [mod] + [v for k, v in vars(mod).items() if not k.startswith("_") and
                            getattr(v, "__module__", "") == name and (inspect.isclass(v) or inspect.isfunction(v))]
            out += [d for d in map(inspect.getdoc, objs) if d and len(d) >= min_chars]
    return out


def source_files(n: int = 200) -> list[str]:
    """The text of the first `n` top-level standard-library .py files, by name."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))[:n]
    out = []
    for f in files:
        with open(f, encoding="utf-8", errors="ignore") as fh:
            out.append(fh.read())
    return out


def windows(tok, texts: list[str], n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Up to `n` non-overlapping (PROMPT ids, ANSWER ids) windows of `texts`, in a seeded shuffled order."""
    out = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        step = PROMPT + ANSWER
        out += [(ids[s : s + PROMPT], ids[s + PROMPT : s + step]) for s in range(0, len(ids) - step + 1, step)]
    random.Random(seed).shuffle(out)
    return out[:n]


def training_windows(tok, seed: int, skip: int) -> list[tuple[list[int], list[int]]]:
    """All docstring windows in `windows`' seeded order but the first `skip` (held out: the warm-start
    search takes its windows from the front of the same order)."""
    out = windows(tok, docstrings(), 10**9, seed)[skip:]
    if not out:
        raise ValueError(f"no generic prose windows left to train on after the first {skip}")
    return out
