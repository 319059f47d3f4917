"""equalcost: the learned method against static baselines at equal cost, the comparison the Pareto goal is
judged by ("above the best static baseline at every budget at equal measured latency").

Cost `x` is measured `seconds_per_item` or modeled `flops_per_token` (noise-free, blind to overheads); the
metric is accuracy, or NLL per token of the reference where every line has one (gsm8k-loglik, lower is
better). Two directions:
- `at_equal_latency`: per budget, the best static point against the learned curve (its points and dense)
  interpolated at that point's cost;
- `static_at_learned`: each learned point against the best static curve interpolated at its cost.
Each row's gain carries a paired 95% CI over items when the lines recorded per-item values (paired.py):
the interpolated curve's items are interpolated item by item. The best static method is picked on the
full sample, which favours the baselines. Not here: the report and plots (pareto.py).
"""

from __future__ import annotations

import math

from . import paired


LEARNED = ("l2a", "l2a-strict", "l2a-exact")  # the learned gates' decision modes (gates.MODES), each compared alone


def _finite(*xs) -> bool:
    return all(x is not None and isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """y at x on the piecewise-linear curve through (x, y) points; None outside their x range. y may be a
    number or an array (per-item values: the curve's items at x)."""
    pts = sorted(points, key=lambda p: p[0])
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[0][1] if len(pts) == 1 and pts[0][0] == x else None


def _layers_budget(b) -> float:
    return b.get("layers", 1.0) if isinstance(b, dict) else float(b)


def _cost_view(lines: list[dict], learned: str, x: str):
    """What both equal-cost comparisons read: (y_key, sign (gain > 0: the learned method is better),
    the learned method's lines, the static methods' lines (on the learned method's axes), dense's lines).
    y is NLL per token (lower is better) where every line has one (gsm8k-loglik), else accuracy. x is the
    cost: measured `seconds_per_item`, or modeled `flops_per_token` (noise-free, blind to overheads)."""
    y = "nll" if lines and all(r.get("nll") is not None for r in lines) else "accuracy"
    ok = [r for r in lines if _finite(r.get(x), r.get(y))]
    ours = [r for r in ok if r["method"] == learned]
    axes = {r.get("axis") for r in ours}
    statics = [r for r in ok if r["method"] != "dense" and not r["method"].startswith("l2a")
               and r["method"] != learned and r.get("axis") in axes]
    dense = [r for r in ok if r["method"] == "dense"]
    return y, (-1.0 if y == "nll" else 1.0), ours, statics, dense


def _paired(y: str, sign: float, x: str, learned: list[dict], static: list[dict], at: float):
    """95% CI of the learned curve's gain over the static curve at cost `at` (each a list of lines: a
    curve through them, or one point), paired over items (paired.py); None without per-item values."""
    w = paired.same_items(learned + static, y)
    if w is None:
        return None
    a = interpolate([(r[x], paired.values(r, y)) for r in learned], at)
    b = interpolate([(r[x], paired.values(r, y)) for r in static], at)
    return None if a is None or b is None else paired.diff_ci(a, b, w, sign)


def at_equal_latency(lines: list[dict], learned: str = "l2a", x: str = "seconds_per_item") -> tuple[str, list[dict]]:
    """(y_key, rows): per budget below 1, the best static point at that budget against the `learned`
    method's curve (its points and dense, y vs measured seconds per item) interpolated at that point's
    measured latency, the comparison "above the best static baseline at equal measured latency" is judged
    by (`x="flops_per_token"`: at equal modeled FLOPs instead). A row's `gain` is None when the static point
    is cheaper or costlier than every learned point; its `x` is the static point's cost."""
    y, sign, ours, statics, dense = _cost_view(lines, learned, x)
    curve = [(r[x], r[y]) for r in ours + dense]
    best: dict = {}
    for r in statics:
        b = _layers_budget(r["budget"])
        if b < 1.0 and (b not in best or sign * r[y] > sign * best[b][y]):
            best[b] = r
    rows = []
    for b in sorted(best, reverse=True):
        r = best[b]
        at = interpolate(curve, r[x]) if curve else None
        rows.append({"budget": b, "static": r["method"], "static_y": r[y], "x": r[x],
                     "learned_y": at, "gain": None if at is None else sign * (at - r[y]),
                     "ci": None if at is None else _paired(y, sign, x, ours + dense, [r], r[x])})
    return y, rows


def static_at_learned(lines: list[dict], learned: str = "l2a", x: str = "seconds_per_item") -> tuple[str, list[dict]]:
    """The other direction of `at_equal_latency`: per point of the learned method below budget 1, every
    static method's curve (its points and dense) interpolated at that point's cost `x`, the best
    of them, and the learned point's `gain` over it (None when no static curve spans that latency)."""
    y, sign, ours, statics, dense = _cost_view(lines, learned, x)
    curves: dict = {}
    for r in statics:
        curves.setdefault(r["method"], []).append(r)
    rows = []
    for r in sorted((r for r in ours if _layers_budget(r["budget"]) < 1.0), key=lambda r: -_layers_budget(r["budget"])):
        at = {m: interpolate([(q[x], q[y]) for q in pts + dense], r[x]) for m, pts in curves.items()}
        at = {m: v for m, v in at.items() if v is not None}
        top = max(at, key=lambda m: sign * at[m]) if at else None
        ci = None if top is None else _paired(y, sign, x, [r], curves[top] + dense, r[x])
        rows.append({"budget": _layers_budget(r["budget"]), "learned_y": r[y], "x": r[x], "static": top,
                     "static_y": at.get(top), "gain": None if top is None else sign * (r[y] - at[top]), "ci": ci})
    return y, rows


def _gain_cell(row: dict, pct: float, f: str) -> str:
    """A comparison row's gain, with its paired 95% CI when the lines carry per-item values."""
    ci = row.get("ci")
    return f"{pct * row['gain']:+{f}}" + ("" if ci is None else f" [{pct * ci[0]:+{f}}, {pct * ci[1]:+{f}}]")


def _tally(rows: list[dict]) -> str:
    """'k of n' comparisons with a positive gain, and how many CIs lie wholly above or below zero."""
    won = sum(1 for r in rows if r["gain"] is not None and r["gain"] > 0)
    cis = [r["ci"] for r in rows if r.get("ci") is not None]
    sure = "" if not cis else (f" (paired 95% CI above zero at {sum(lo > 0 for lo, _ in cis)}, below zero at "
                               f"{sum(hi < 0 for _, hi in cis)}, spanning zero at {sum(lo <= 0 <= hi for lo, hi in cis)})")
    return f"{won} of {len(rows)}{sure}"


