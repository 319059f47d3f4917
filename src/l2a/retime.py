"""retime: interleaved timing of finished evaluation points, so latencies can be compared within a run.

`evaluate` times each point once, while it scores it; points run minutes apart, and on a shared machine
the speed drifts by as much as the methods differ (measured: the same point 56 and 72 ms per item in two
back-to-back runs). `retime` measures all points of one data file again on their first `items` items,
interleaved batch by batch: each batch of items runs under every point in turn (the order rotated from
batch to batch and round to round) before the next batch starts, so a slow period of a few seconds hits
every point alike, not only the one whose whole pass it fell in. A round is one pass over the items this
way, and `repeats` rounds are run. The machine's speed still drifts from round to round (measured: dense
27.6 s in the first round, 23.0 s in the fifth, every point alike), so each point's time is the median over
rounds after each round's common factor is divided out (`round_adjusted`: a two-way model of log seconds,
point + round; the rounds are blocks). A point's ratio to another is then the median of their per-round
ratios, whatever the rounds' speeds. The line then carries `seconds_per_item` and `tokens_per_s` from those
times, the scoring pass's own timing as `seconds_per_item_single`, and `timing` = {"method":
"interleaved", "unit": "batch", "estimate": "round-adjusted median", "repeats", "items", "seconds" (per
round, as measured)}. Accuracy and every other field are left as they were. Seeded methods are timed with their
first seed. `retime_results` does the same for the lines of one data file spread over several results
files (other calibrations, other gates), each line run with its own policy. This module does not score
(`evaluate.py`) and does not plot (`pareto.py`).
"""

from __future__ import annotations

import statistics
import time


def _time_once(model, task, rows, decide, batch_size: int, max_new_tokens: int) -> tuple[float, int]:
    """(wall seconds, processed or generated tokens) of one pass of `task` over `rows`."""
    import torch

    torch.manual_seed(0)
    t0, tokens = time.perf_counter(), 0
    for batch in task.run(model, rows, decide, batch_size=batch_size, max_new_tokens=max_new_tokens):
        tokens += sum(it.tokens for it in batch)
    return time.perf_counter() - t0, tokens


def round_adjusted(seconds: list[list[float]]) -> list[float]:
    """Per point, the median over rounds of its seconds with each round's common factor divided out:
    seconds[j][r] = point j in round r; a round's factor is the geometric mean over points of its seconds
    relative to the median round's. A round uniformly slower or faster for every point changes no ratio, nor
    any level while it stays off the median; with one point (nothing to pair with) or one round this is the
    plain median."""
    import math

    n, rounds = len(seconds), len(seconds[0]) if seconds else 0
    if n < 2 or rounds < 2 or any(x <= 0 for s in seconds for x in s):
        return [statistics.median(s) for s in seconds]
    logs = [[math.log(x) for x in s] for s in seconds]  # (points, rounds)
    mean = [sum(lg[r] for lg in logs) / n for r in range(rounds)]  # (rounds,) mean log seconds of each round
    factor = [m - statistics.median(mean) for m in mean]  # (rounds,) relative to the median round
    return [math.exp(statistics.median(lg[r] - factor[r] for r in range(rounds))) for lg in logs]


def retime(model, task, rows, points, repeats: int = 5, items: int = 100, batch_size: int = 8,
           max_new_tokens: int = 256, progress: bool = True) -> list[dict]:
    """Interleaved timing of `points` [(policy, Budget)] on `rows[:items]`; returns per point the fields to
    merge into its line: seconds_per_item, tokens_per_s, timing (the single-pass value is the caller's)."""
    from tqdm.auto import tqdm

    if repeats < 1 or items < 1:
        raise ValueError(f"timing repeats and items must be >= 1, got {repeats}, {items}")
    from .evaluate import decider  # calibration and warm-up exactly as the scoring pass does them

    rows = rows[:items]
    deciders = [decider(model, policy, b, task, rows, max_new_tokens) for policy, b in points]
    chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]  # the batches task.run makes
    n = len(points)
    seconds, tokens = [[0.0] * repeats for _ in range(n)], [0] * n
    bar = tqdm(total=repeats * len(chunks) * n, desc="interleaved timing", disable=not progress, leave=False)
    for r in range(repeats):
        for k, chunk in enumerate(chunks):
            for j in [(i + r + k) % n for i in range(n)]:  # rotated: no point always runs first or after the same one
                s, tok = _time_once(model, task, chunk, deciders[j], batch_size, max_new_tokens)
                seconds[j][r] += s
                tokens[j] += tok if r == 0 else 0
                bar.update(1)
    bar.close()
    out = []
    for s, tok, t in zip(seconds, tokens, round_adjusted(seconds)):
        out.append({"seconds_per_item": t / len(rows), "tokens_per_s": tok / t if t > 0 else 0.0,
                    "timing": {"method": "interleaved", "unit": "batch", "estimate": "round-adjusted median",
                               "repeats": repeats, "items": len(rows), "seconds": [round(x, 4) for x in s]}})
    return out


def retime_file(model, task, rows, results, points, data_label, cfg, out, repeats, items, progress=True,
                force: bool = False) -> None:
    """Interleaved re-timing of one data file's measured lines: `points` [(index in results, policy, Budget)].
    Lines copied from another (`reused_from`, e.g. a static method at budget 1.0 = dense) take their
    source's timing. `results` is updated in place and `out` rewritten (other lines unchanged). Skipped when
    every line was already timed with these settings, unless `force`."""
    want = {"method": "interleaved", "unit": "batch", "repeats": repeats, "items": min(items, len(rows))}
    if not force and all({k: results[i].get("timing", {}).get(k) for k in want} == want for i, _, _ in points):
        return  # already timed together with these settings
    fields = retime(model, task, rows, [(p, b) for _, p, b in points], repeats, items, cfg.batch_size,
                    cfg.max_new_tokens, progress)
    for (i, _, _), f in zip(points, fields):
        results[i] = _timed(results[i], f)
    _copies_take_dense_timing(results, data_label)
    if out is not None:
        _rewrite(out, [r for r in results if r.get("data") == data_label])


def _timed(line: dict, fields: dict) -> dict:
    """`line` with the interleaved timing `fields`; its scoring pass's own timing kept as seconds_per_item_single."""
    return dict(line, **fields, seconds_per_item_single=line.get("seconds_per_item_single", line.get("seconds_per_item")))


def _copies_take_dense_timing(results: list[dict], data_label) -> None:
    """Lines of `data_label` copied from dense (`reused_from`: a static method at budget 1.0) take the timed
    dense line's timing, in place."""
    dense = next((r for r in results if r.get("method") == "dense" and r.get("data") == data_label and "timing" in r),
                 None)
    if dense is None:
        return
    for i, r in enumerate(results):
        if r.get("data") == data_label and "reused_from" in r:
            results[i] = dict(r, **{k: dense[k] for k in ("seconds_per_item", "tokens_per_s", "timing",
                                                          "seconds_per_item_single")})


def _rewrite(path, records: list[dict]) -> None:
    """Replace the lines of `path` that have the same key as one of `records` (atomically)."""
    import json
    import os

    from .results import line_key, read_results

    new = {line_key(r): r for r in records}
    lines = [new.get(line_key(r), r) for r in read_results(path)]
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)
    os.replace(tmp, path)


class _WithGates:
    """An l2a policy (any mode) run with its own gates: attached to the model for each call and detached after,
    so lines of several gate artifacts are timed side by side on one model."""

    def __init__(self, inner, gates):
        self.inner, self.gates, self.name = inner, gates, inner.name

    def _run(self, model, fn, *args, **kw):
        with model.using(self.gates):
            return fn(model, *args, **kw)

    def decide(self, model, *args, **kw):
        return self._run(model, self.inner.decide, *args, **kw)

    def score(self, model, *args, **kw):
        return self._run(model, self.inner.score, *args, **kw)


def retime_results(model, task, data: str, files: list, repeats: int = 3, items: int = 40, batch_size: int = 8,
                   max_new_tokens: int = 256, progress: bool = True) -> dict:
    """Interleaved timing of the measured lines of `data` (the path as the lines name it) in every results
    file of `files` [(path, GatePolicy or None)], in one run. A static line is run under the calibration its
    line records, an l2a line with its file's gates (ValueError unless their digest is the line's); a point
    in several files (dense, a static line copied between files) is timed once and written to each, a copy
    of dense (`reused_from`) takes dense's timing. Every file is rewritten with the timing fields only
    (`seconds_per_item`, `tokens_per_s`, `timing`, `seconds_per_item_single`: the scoring pass's). Returns
    {point label: median seconds per item}."""
    import hashlib
    import json

    from .baselines import make_method
    from .budget import Budget
    from .checkpoint import policy_digest
    from .results import read_results
    from .static import Calibration

    name_of_task = getattr(task, "name", str(task))
    points, where, lines = {}, {}, []  # key -> (label, policy, Budget); key -> [(file, line)]; lines per file
    for fi, (path, gates) in enumerate(files):
        rs = read_results(path)
        lines.append(rs)
        digest = None if gates is None else policy_digest(gates)
        mine = [r for r in rs if r.get("data") == data and r.get("task") == name_of_task]
        if len({r.get("config", {}).get("limit") for r in mine}) > 1:
            raise ValueError(f"{path}: lines of {data} with several limits; time them from separate files")
        for li, r in enumerate(rs):
            if r.get("data") != data or r.get("task") != name_of_task or "reused_from" in r:
                continue
            name, budget = r["method"], json.dumps(r.get("budget"), sort_keys=True)
            if "bridges" in r:
                raise ValueError(f"{path}: its {name} line ran with bridges, which retime_lines does not load; "
                                 "time it with `l2a eval --bridges DIR --timing-repeats N`")
            if name.startswith("l2a"):
                if r.get("gates_digest") != digest:
                    raise ValueError(f"{path}: its {name} line at {r.get('budget')} was written by gates "
                                     f"{r.get('gates_digest')}, not by the gates given for it ({digest})")
                key, policy = (name, budget, f"gates {digest}"), _WithGates(make_method(name), gates)
            else:
                saved = (r.get("config") or {}).get("calibration") or {}
                cal = Calibration(**{k: v for k, v in saved.items() if k in Calibration.__dataclass_fields__})
                policy = make_method(name, seed=0, calibration=cal)
                cal_id = hashlib.sha256(json.dumps(saved, sort_keys=True).encode()).hexdigest()[:8]
                key = (name, budget, f"calibration {cal_id}" if hasattr(policy, "calibration") else "")
            if key not in points:  # labelled by method, budget and the calibration's or the gates' digest
                points[key] = (f"{name} {budget} {key[2]}".strip(), policy, Budget.parse(r["budget"]))
            where.setdefault(key, []).append((fi, li))
    if not points:
        raise ValueError(f"no measured lines of {name_of_task} on {data} in {', '.join(str(p) for p, _ in files)}")
    rows, _ = task.load(data)
    keys = list(points)
    fields = retime(model, task, rows, [points[k][1:] for k in keys], repeats, items, batch_size, max_new_tokens,
                    progress)
    for k, f in zip(keys, fields):
        for fi, li in where[k]:
            lines[fi][li] = _timed(lines[fi][li], f)
    for (path, _), rs in zip(files, lines):
        _copies_take_dense_timing(rs, data)
        _rewrite(path, [r for r in rs if r.get("data") == data and r.get("task") == name_of_task])
    return {points[k][0]: f["seconds_per_item"] for k, f in zip(keys, fields)}
