"""Compare gate artifacts (training recipes, seeds) item by item on the same items.

    python scripts/paired_recipes.py NAME=RESULTS.jsonl NAME=RESULTS.jsonl [...]

Each RESULTS file is an `l2a eval` results file holding one artifact's `l2a` lines (and, usually, the same
dense and static lines). For every (data file, budget) the artifacts share, it prints each artifact's
accuracy (NLL per token for gsm8k-loglik) and realized layer fraction, and each artifact's difference to
the first with its paired 95% CI over items (l2a.paired). A difference between two seeds of one recipe
whose CI excludes zero is training variance, not evaluation noise. Reads results only; writes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from l2a import paired
from l2a.results import read_results


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any("=" not in a for a in argv):
        print(__doc__, file=sys.stderr)
        return 2
    runs = {}  # name -> {(data, layers budget): line}
    for arg in argv:
        name, path = arg.split("=", 1)
        runs[name] = {(Path(r["data"]).stem, r["budget"]["layers"]): r for r in read_results(path)
                      if r.get("method") == "l2a" and isinstance(r.get("budget"), dict) and r["budget"]["layers"] < 1}
        if not runs[name]:
            print(f"{path}: no l2a lines below budget 1 (a missing file, or not an `l2a eval` results file)", file=sys.stderr)
            return 1
    names = list(runs)
    keys = sorted(set.intersection(*(set(v) for v in runs.values())), key=lambda k: (k[0], -k[1]))
    if not keys:
        print("no (data, budget) point is in every file", file=sys.stderr)
        return 1
    print("| data | budget | " + " | ".join(names) + " | " + " | ".join(f"{n} − {names[0]} (95% CI)" for n in names[1:]) + " |")
    print("|---|---|" + "---|" * (2 * len(names) - 1))
    means, pooled = {}, {}  # comparison k -> per-cell differences, bootstrap samples
    for data, b in keys:
        lines = [runs[n][data, b] for n in names]
        y = "nll" if all(r.get("nll") is not None for r in lines) else "accuracy"
        scale, f, sign = (1.0, ".3f", -1.0) if y == "nll" else (100.0, ".1f", 1.0)
        cells = [f"{scale * r[y]:{f}} ({r['realized_layers']:.2f})" for r in lines]
        w = paired.same_items(lines, y)
        diffs = []
        for k, r in enumerate(lines[1:]):
            d = sign * (r[y] - lines[0][y])
            ci = ""
            if w is not None:
                s = paired.diff_samples(paired.values(r, y), paired.values(lines[0], y), w, sign)
                ci = " [{:+{f}}, {:+{f}}]".format(*(scale * v for v in paired.interval(s)), f=f)
                if y == "accuracy":
                    pooled.setdefault(k, []).append(s)
            diffs.append(f"{scale * d:+{f}}{ci}")
            if y == "accuracy":
                means.setdefault(k, []).append(d)
        print(f"| {data} | {b:g} | " + " | ".join(cells + diffs) + " |")
    if means:  # the mean difference over the accuracy cells; one data file's cells share their resamples
        row = []
        for k in sorted(means):
            d = 100 * sum(means[k]) / len(means[k])
            full = k in pooled and len(pooled[k]) == len(means[k])
            ci = " [{:+.1f}, {:+.1f}]".format(*(100 * v for v in paired.interval(np.mean(pooled[k], axis=0)))) if full else ""
            row.append(f"{d:+.1f}{ci}")
        print(f"| mean of {len(means[0])} accuracy cells | – | " + " | ".join(["–"] * len(names) + row) + " |")
    print("\nCells: accuracy % (NLL per token for gsm8k-loglik), realized layer fraction in brackets; differences are "
          "signed so that positive is better.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
