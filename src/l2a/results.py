"""results: the results file of `l2a eval`, one JSON line per (task, method, data, budget, limit) point.

Lines are appended as points finish (a killed run's torn last line is cut off or skipped), so a run
resumes where it stopped. A point whose task now scores differently (its `metric_version`) is scored
again, and its new line supersedes the old one for every reader (`read_results`).
"""

from __future__ import annotations

import json
import os
import sys

from .tasks import TASKS


def point_key(task: str, method: str, data, budget, limit) -> str:
    """A point's identity. An existing data file is keyed by its resolved path, so the same file given as
    `../shared/data/x.jsonl` or `/abs/.../x.jsonl` is one point (lines keep the path as given)."""
    if isinstance(data, str) and os.path.exists(data):
        data = os.path.realpath(data)
    return json.dumps([task, method, data, budget, limit], sort_keys=True)


def line_key(r: dict) -> str:
    return point_key(r.get("task"), r.get("method"), r.get("data"), r.get("budget"), r.get("config", {}).get("limit"))


def read_results(path) -> list[dict]:
    """The lines of a results file, but those a point's line scored again supersedes (after a change of
    its task's metric: `stale`). A torn last line (killed run) is skipped with a warning."""
    if path is None or not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                print(f"l2a eval: ignoring a torn last line in {path}", file=sys.stderr)
                continue
            raise ValueError(f"{path}:{n}: not a JSON line; a results file holds one JSON object per line") from None
    old = [stale(r) for r in out]
    current = {line_key(r) for r, o in zip(out, old) if "method" in r and not o}
    return [r for r, o in zip(out, old) if not (o and line_key(r) in current)]


def stale(line: dict) -> bool:
    """Whether a line was scored by an older version of its task's metric (`metric_version`, 1 if absent)."""
    return line.get("metric_version", 1) != getattr(TASKS.get(line.get("task")), "metric_version", 1)


def append(path, record: dict) -> None:
    """Append one line; a torn last line left by a killed run (no trailing newline) is cut off first."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(0)
            body = f.read()
            if not body.endswith(b"\n"):
                f.truncate(body.rfind(b"\n") + 1)
        f.seek(0, os.SEEK_END)
        f.write((json.dumps(record) + "\n").encode("utf-8"))


def finished(out) -> dict[str, dict]:
    """The finished lines of a results file by point key, but those scored by an older version of their
    task's metric: those are scored again, and the new line, appended, supersedes the old one."""
    done, old = {}, {}
    for r in read_results(out):
        if stale(r):
            old.setdefault((r.get("task"), r.get("metric_version", 1)), []).append(r)
        else:
            done[line_key(r)] = r
    for (task, was), lines in old.items():
        print(f"l2a eval: {out}: {len(lines)} line(s) of {task} were scored by metric version {was} (now "
              f"{getattr(TASKS.get(task), 'metric_version', 1)}); scoring them again", file=sys.stderr)
    return done


def merge(specs: list[str]) -> list[dict]:
    """The lines of several results files as one list, to compare runs side by side (scripts/combine.py,
    scripts/scoreboard.py). Each spec is `PATH` or `PATH:SUFFIX`; with a suffix, the file's static lines get
    it on their method name (`greedy-kl` -> `greedy-kl+mc`) so one method under two calibrations stays two
    curves (dense and the learned `l2a*` lines keep theirs). A point already given by an earlier file (same
    method, task, data and budget: mostly each file's dense line) is left out. A missing or empty file is a
    ValueError."""
    out, seen = [], set()
    for spec in specs:
        path, _, suffix = spec.partition(":")
        lines = read_results(path)
        if not lines:
            raise ValueError(f"{path}: no results lines (missing, or not an `l2a eval` results file)")
        for r in lines:
            if "method" not in r:
                continue
            if suffix and r["method"] != "dense" and not r["method"].startswith("l2a"):
                r = {**r, "method": r["method"] + suffix}
            key = (r["method"], r.get("task"), r.get("data"), json.dumps(r["budget"], sort_keys=True))
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out
