"""data: find and read the benchmark files l2a evaluates on, in the two formats of shared/data/README.md.

- **math** rows: ``{"question": str, "answer": str}``, the answer ending in ``#### N`` (GSM8K style);
- **mc** rows: ``{"question": str, "choices": [str, ...], "answer": int}`` (0-based; extra keys such as
  ``subject`` are kept). WinoGrande rows have an empty question and whole sentences as choices.

Every loader returns ``(rows, source)``; ``source`` says which one ran: ``"file:<path>"``, ``"hub:<name>"``
or ``"generated"``. A relative path is looked up as given, then under each data root (``$L2A_DATA``, then
``../shared/data`` beside the repository checkout and beside the working directory). For GSM8K with no
file anywhere, the hub is tried through ``datasets`` only when it is importable and the hub is not
marked offline and answers within a second; else a small deterministic synthetic set is generated.

No torch here. This module does not tokenize or build prompts (`tasks.py` does).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

DATA_ENV = "L2A_DATA"  # overrides the data root
_REPO = Path(__file__).resolve().parents[2]  # src/l2a/data.py -> repository checkout

MATH_FORMAT = '{"question": str, "answer": str ending in "#### N"}'
MC_FORMAT = '{"question": str, "choices": [str, ...], "answer": int (0-based index of the correct choice)}'


def data_roots() -> list[Path]:
    """Directories searched for relative data paths, in order (duplicates removed)."""
    roots: list[Path] = []
    env = os.environ.get(DATA_ENV)
    if env:
        roots.append(Path(env).expanduser())
    roots += [_REPO.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    out: list[Path] = []
    for r in roots:
        if r not in out:
            out.append(r)
    return out


def resolve(path) -> Path:
    """The file `path` names: as given, else under each data root; FileNotFoundError lists what was tried."""
    p = Path(path).expanduser()
    tried = [p]
    if p.is_file():
        return p
    if not p.is_absolute():
        for root in data_roots():
            q = root / p
            tried.append(q)
            if q.is_file():
                return q
    listing = "\n  ".join(str(t) for t in tried)
    raise FileNotFoundError(
        f"data file {os.fspath(path)!r} not found; tried:\n  {listing}\n"
        f"(set ${DATA_ENV} to the directory holding gsm8k/ math/ mc/, or pass an existing path)"
    )


# ---- validated JSONL readers -------------------------------------------------------------------------


def _read_jsonl(path: Path, check, fmt: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); expected one object per line: {fmt}") from None
            problem = check(row)
            if problem:
                raise ValueError(f"{path}:{n}: {problem}; expected one object per line: {fmt}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows; expected one JSON object per line: {fmt}")
    return rows


def _check_math(row) -> str | None:
    if not isinstance(row, dict):
        return f"a line holds {type(row).__name__}, not an object"
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str):
            return f"field {key!r} is missing or not a string"
    if target(row) is None:
        return "the answer has no final '#### N'"
    return None


def _check_mc(row) -> str | None:
    if not isinstance(row, dict):
        return f"a line holds {type(row).__name__}, not an object"
    if not isinstance(row.get("question"), str):
        return "field 'question' is missing or not a string (use \"\" for WinoGrande-style rows)"
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        return "field 'choices' must be a list of at least two non-empty strings"
    ans = row.get("answer")
    if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < len(choices):
        return f"field 'answer' must be an int index into choices (0..{len(choices) - 1}), got {ans!r}"
    return None


def read_math(path) -> list[dict]:
    """Rows of a math JSONL file (validated; ValueError names file, line and format)."""
    return _read_jsonl(Path(path), _check_math, MATH_FORMAT)


def read_mc(path) -> list[dict]:
    """Rows of a multiple-choice JSONL file (validated; ValueError names file, line and format)."""
    return _read_jsonl(Path(path), _check_mc, MC_FORMAT)


def target(row: dict) -> str | None:
    """The text after the last '####' of a math row's answer, or None."""
    answer = row.get("answer", "")
    if "####" not in answer:
        return None
    return answer.rsplit("####", 1)[1].strip() or None


# ---- loaders ---------------------------------------------------------------------------------------------


def load_mc(path) -> tuple[list[dict], str]:
    p = resolve(path)
    return read_mc(p), f"file:{p}"


def load_math(path=None, split: str = "test", n_generated: int = 50) -> tuple[list[dict], str]:
    """Math rows: from `path`; or with no path, GSM8K `split` from a data root, the hub, or generated."""
    if path is not None:
        p = resolve(path)
        return read_math(p), f"file:{p}"
    try:
        p = resolve(f"gsm8k/{split}.jsonl")
        return read_math(p), f"file:{p}"
    except FileNotFoundError:
        pass
    rows = _from_hub(split)
    if rows is not None:
        return rows, "hub:openai/gsm8k"
    return generate_gsm8k(n_generated, seed=0 if split == "test" else 1), "generated"


def load(kind: str, path=None, **kw) -> tuple[list[dict], str]:
    """`load("math"|"mc", path)`: dispatch on the data format."""
    if kind == "math":
        return load_math(path, **kw)
    if kind == "mc":
        if path is None:
            raise ValueError("multiple-choice data needs a file path (e.g. mc/arc_easy.jsonl)")
        return load_mc(path)
    raise ValueError(f"unknown data format {kind!r}; valid: math, mc")


def _hub_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _from_hub(split: str) -> list[dict] | None:
    """GSM8K from the hub through `datasets`, or None when it is not importable, offline or unreachable."""
    import importlib.util

    if _hub_offline() or importlib.util.find_spec("datasets") is None:
        return None
    import socket

    try:  # fail fast instead of letting `datasets` retry for minutes
        socket.create_connection(("huggingface.co", 443), timeout=1.0).close()
    except OSError:
        return None
    try:
        import datasets

        ds = datasets.load_dataset("openai/gsm8k", "main", split=split)
        return [{"question": r["question"], "answer": r["answer"]} for r in ds]
    except Exception:  # any hub/cache failure: fall through to the generated set
        return None


# ---- a synthetic GSM8K-style set ---------------------------------------------------------------------

_NAMES = ("Ava", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Liam")
_THINGS = ("apples", "marbles", "stickers", "books", "cookies", "pencils", "stamps", "shells")


def generate_gsm8k(n: int = 50, seed: int = 0) -> list[dict]:
    """`n` deterministic two- or three-step arithmetic word problems with GSM8K-style worked answers."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name, other = rng.sample(_NAMES, 2)
        thing = rng.choice(_THINGS)
        a, b, c = rng.randint(3, 40), rng.randint(2, 9), rng.randint(1, 20)
        kind = i % 4
        if kind == 0:
            q = f"{name} has {a} {thing}. {other} gives {name} {b} times as many {thing} as {name} has. How many {thing} does {name} have now?"
            s, r = a * b, a + a * b
            sol = f"{other} gives {a} * {b} = <<{a}*{b}={s}>>{s} {thing}.\n{name} now has {a} + {s} = <<{a}+{s}={r}>>{r} {thing}."
        elif kind == 1:
            a = max(a, c + 1)
            q = f"{name} had {a} {thing} and lost {c} of them. Then {name} bought {b} packs of 5 {thing}. How many {thing} does {name} have?"
            s, t = a - c, b * 5
            r = s + t
            sol = (f"After losing some, {name} has {a} - {c} = <<{a}-{c}={s}>>{s} {thing}.\n"
                   f"The packs hold {b} * 5 = <<{b}*5={t}>>{t} {thing}.\nSo {name} has {s} + {t} = <<{s}+{t}={r}>>{r} {thing}.")
        elif kind == 2:
            price = rng.randint(2, 12)
            q = f"Each of the {thing} costs ${price}. {name} buys {b} of them and pays with a $100 bill. How much change does {name} get?"
            if price * b >= 100:
                b = 100 // price - 1
                q = f"Each of the {thing} costs ${price}. {name} buys {b} of them and pays with a $100 bill. How much change does {name} get?"
            s = price * b
            r = 100 - s
            sol = f"The {thing} cost {price} * {b} = $<<{price}*{b}={s}>>{s}.\nThe change is 100 - {s} = $<<100-{s}={r}>>{r}."
        else:
            c = max(c, 2)
            per = b
            total = per * c
            q = f"{name} shares {total} {thing} equally among {c} friends. How many {thing} does each friend get?"
            r = per
            sol = f"Each friend gets {total} / {c} = <<{total}/{c}={r}>>{r} {thing}."
        rows.append({"question": q, "answer": f"{sol}\n#### {r}"})
    return rows
