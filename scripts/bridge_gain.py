"""What bridges change: each method's point with and without them, on the same items, with the paired 95% CI.

    python scripts/bridge_gain.py runs/bridges/gsm8k.jsonl runs/bridges/mc.jsonl [--json]
    python scripts/bridge_gain.py runs/bridges/gsm8k_tuned.jsonl --against runs/bridges/gsm8k.jsonl

One row per (data file, method, budget) that has both a `METHOD` and a `METHOD+bridges` line: the metric of
each (GSM8K: teacher-forced NLL per token; multiple choice: accuracy in points), the gain (> 0: the bridges
are better) with its paired bootstrap CI over items, and the modeled FLOPs fraction of each (bridges cost).
With `--against FILES`, each `METHOD+bridges` line is paired instead with the `METHOD+bridges` line of those
files (other bridges, e.g. the ridge maps a tuning started from): the gain of these bridges over those.
"""

import argparse
import json
import os

from l2a import paired
from l2a.results import read_results


def rows(paths, against=()):
    lines = [r for p in paths for r in read_results(p)]
    others = [r for p in against for r in read_results(p)] or lines
    out = []
    for r in lines:
        if not r["method"].endswith("+bridges"):
            continue
        base = r["method"].removesuffix("+bridges")
        want = r["method"] if against else base
        twin = next((q for q in others if q["method"] == want and q.get("data") == r.get("data")
                     and q.get("task") == r.get("task") and q.get("budget") == r.get("budget")), None)
        if twin is None:
            continue
        y, sign, pct = ("nll", -1.0, 1.0) if r.get("nll") is not None else ("accuracy", 1.0, 100.0)
        w = paired.same_items([r, twin], y)
        ci = None if w is None else paired.diff_ci(paired.values(r, y), paired.values(twin, y), w, sign)
        b = r["budget"]["layers"] if isinstance(r["budget"], dict) else r["budget"]
        out.append({"data": os.path.basename(r.get("data") or ""), "method": base, "budget": b, "y": y,
                    "plain": pct * twin[y], "bridged": pct * r[y], "gain": pct * sign * (r[y] - twin[y]),
                    "ci": None if ci is None else [pct * ci[0], pct * ci[1]],
                    "flops": [twin["flops_fraction"], r["flops_fraction"]], "layers": r["realized_layers"]})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--against", nargs="+", default=[], metavar="FILE",
                    help="pair with the METHOD+bridges lines of these files (other bridges) instead of the plain lines")
    ap.add_argument("--json", action="store_true", help="one JSON record instead of the markdown table")
    args = ap.parse_args()
    rs = rows(args.results, args.against)
    if args.json:
        print(json.dumps({"command": "bridge_gain", "rows": rs}))
        return
    were = "those bridges" if args.against else "plain"
    print(f"| data | method | budget | realized layers | {were} | +bridges | gain [95% CI] | FLOPs ({were} → these) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rs:
        f = ".3f" if r["y"] == "nll" else ".1f"
        ci = "" if r["ci"] is None else f" [{r['ci'][0]:+{f}}, {r['ci'][1]:+{f}}]"
        sure = r["ci"] is not None and (r["ci"][0] > 0 or r["ci"][1] < 0)
        gain = f"{r['gain']:+{f}}{ci}"
        print(f"| {r['data']} | {r['method']} | {r['budget']:g} | {r['layers']:.3f} | {r['plain']:{f}} | {r['bridged']:{f}} | "
              f"{'**' + gain + '**' if sure else gain} | {r['flops'][0]:.3f} → {r['flops'][1]:.3f} |")


if __name__ == "__main__":
    main()
