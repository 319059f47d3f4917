"""pareto: turn an `l2a eval` results file into a markdown report and accuracy-vs-cost plots.

`report(results_path, out_dir)` reads the JSON lines `evaluate.py` wrote (it never reruns a model, DESIGN
§6 rule 9) and, per (task, data file), writes:
- a markdown table: method x budget with accuracy +- 95% CI, realized layers and groups, measured s/item
  and modeled GFLOP/token;
- two PNG plots (matplotlib, Agg, imported lazily: the `plot` extra): accuracy vs measured seconds per
  item and accuracy vs modeled FLOPs per token, one curve per method, the Pareto frontier over all
  methods highlighted;
- per method, the largest realized layer sparsity (1 - realized_layers) whose accuracy stays within one
  point (0.01) of dense; None when no sparse point does (or there is no dense line); and the same where
  the paired 95% CI of the difference to dense (paired.py) stays above -1 point;
- the equal-cost comparisons of l2a against the best static baselines (equalcost.py), at measured latency
  and at modeled FLOPs, each gain with its paired 95% CI when the lines carry per-item values.

`pareto_front(points)` is the pure core: indices of the non-dominated (cost, accuracy) points.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Sequence

from . import paired
from .equalcost import LEARNED, _finite, _gain_cell, _tally, at_equal_latency, interpolate, static_at_learned

TOLERANCE = 0.01  # "within 1 point of dense": accuracies are fractions


def dominates(p: Sequence[float], q: Sequence[float]) -> bool:
    """p = (cost, accuracy) dominates q: no more cost, no less accuracy, strictly better in one."""
    return p[0] <= q[0] and p[1] >= q[1] and (p[0] < q[0] or p[1] > q[1])


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates (lower cost, higher accuracy is better).

    Duplicates of a front point are all on the front (equal points do not dominate each other).
    """
    pts = [(float(c), float(a)) for c, a in points]
    return [i for i, p in enumerate(pts) if not any(dominates(q, p) for j, q in enumerate(pts) if j != i)]


def _label(r: dict) -> str:
    """A curve's name: the method, and the axis when the point varies one axis alone."""
    axis = r.get("axis")
    return r["method"] if axis in (None, "all", "custom") or r["method"] == "dense" else f"{r['method']} [{axis}]"


def _budget_label(b) -> str:
    if isinstance(b, dict):
        return "/".join(f"{b[k]:g}" for k in ("layers", "heads", "think") if k in b)
    return f"{b:g}"


def _budget_sort(b) -> float:
    return -(b if not isinstance(b, dict) else b.get("layers", 1.0))


def _fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def sparsity_within(lines: list[dict], tolerance: float = TOLERANCE, confident: bool = False) -> dict:
    """method -> largest 1 - realized_layers with accuracy >= dense - tolerance (None if none). With
    `confident`, the lower end of the paired 95% CI of (accuracy - dense) must be >= -tolerance instead,
    and only methods whose lines carry per-item scores are listed."""
    dense = [r for r in lines if r["method"] == "dense" and _finite(r.get("accuracy"))]
    out: dict = {}
    for r in lines:
        if r["method"] == "dense":
            continue
        w = paired.same_items([r] + dense[:1], "accuracy") if confident else None
        if confident and w is None:
            continue
        name = _label(r)
        out.setdefault(name, None)
        if not dense or not _finite(r.get("accuracy"), r.get("realized_layers")):
            continue
        s = 1.0 - r["realized_layers"]
        if s <= 0:
            continue
        if confident:  # the bootstrap runs only for sparse points
            ok = paired.diff_ci(paired.values(r, "accuracy"), paired.values(dense[0], "accuracy"), w)[0] >= -tolerance - 1e-12
        else:
            ok = r["accuracy"] >= dense[0]["accuracy"] - tolerance - 1e-12
        if ok:
            out[name] = max(s, out[name] or 0.0)
    return out


def hypervolume(points: Sequence[tuple[float, float]], x_ref: float) -> float:
    """Area dominated by (cost, value) points between cost x_ref and value 0: the union of the rectangles
    [x, x_ref] x [0, y]. One number for a whole frontier: larger is better."""
    area = 0.0
    xs = sorted({x for x, _ in points if x < x_ref} | {x_ref})
    for x0, x1 in zip(xs, xs[1:]):  # strip [x0, x1): height = best value among points with cost <= x0
        h = max((y for x, y in points if x <= x0), default=0.0)
        area += (x1 - x0) * max(0.0, h)
    return area


def rank_schedules(lines: list[dict], y_key: str = "agreement") -> list[tuple[str, float, float]]:
    """[(schedule, hypervolume, mean y)] best first, over points swept with `--axes all:NAME`: the area each
    schedule's points dominate in (measured seconds per item, `y_key`) up to the dense point's seconds
    (answer agreement with dense; accuracy when absent). A schedule slower than dense adds nothing."""
    y = y_key if all(r.get(y_key) is not None for r in lines if str(r.get("axis", "")).startswith("all:")) else "accuracy"
    dense = [r for r in lines if r["method"] == "dense" and _finite(r.get("seconds_per_item"))]
    if not dense:
        return []
    x_ref = dense[0]["seconds_per_item"]
    curves: dict = {}
    for r in lines:
        if str(r.get("axis", "")).startswith("all:") and _finite(r.get("seconds_per_item"), r.get(y)):
            curves.setdefault(r["axis"][4:], []).append((r["seconds_per_item"], r[y]))
    out = [(name, hypervolume(pts, x_ref), sum(v for _, v in pts) / len(pts)) for name, pts in curves.items()]
    return sorted(out, key=lambda t: (-t[1], -t[2]))


def at_equal_think(lines: list[dict], y_key: str, baseline: list[dict] | None = None,
                   dense_end: bool = True) -> list[dict]:
    """For each learned-allowance point on the think axis, the fixed cap's `y_key` interpolated at the
    same mean think tokens (the comparison the reasoning axis is judged by). The uncapped dense run is
    the fixed-cap curve's end (a cap no chain reaches) unless `dense_end` is False (budget-aware prompting:
    capped rows run another prompt than dense). `baseline`: lines holding the fixed-cap curve when it is
    another task's (e.g. s1-style caps on `gsm8k` for the l2a points of `gsm8k-budget`)."""
    curve = lambda rs, m, axis="think": [(r["think_tokens"], r[y_key]) for r in rs  # noqa: E731
                                         if r["method"] == m and r.get("axis", "all") == axis and _finite(r.get("think_tokens"), r.get(y_key))]
    ref = lines if baseline is None else baseline
    caps = curve(ref, "think-cap") + (curve(ref, "dense", "all") if dense_end else [])
    out = []
    for x, y in sorted(curve(lines, "l2a")):
        other = interpolate(caps, x)
        out.append({"think_tokens": x, "l2a": y, "think-cap": other, "gain": None if other is None else y - other})
    return out


def markdown_table(lines: list[dict]) -> str:
    """One row per (method, budget): accuracy +- CI and cost columns."""
    norm = any("acc_norm" in r for r in lines)
    nll = any("nll" in r for r in lines)  # gsm8k-loglik: per-token NLL of the reference (lower is better)
    think = any(r.get("think_tokens") for r in lines)  # gsm8k generation: think tokens, answer agreement
    sets = any("layer_sets" in r for r in lines)  # distinct layer sets over a point's items, modal set's share
    head = ["method", "budget", "accuracy (95% CI)"] + (["acc_norm"] if norm else []) + (["NLL/token"] if nll else []) + (
        ["think tokens", "agreement", "forced"] if think else []) + ["layers"] + (["layer sets (modal)"] if sets else []) + [
        "groups", "s/item", "GFLOP/token (modeled)", "n"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {m: i for i, m in enumerate(dict.fromkeys(_label(r) for r in lines))}
    for r in sorted(lines, key=lambda r: (order[_label(r)], _budget_sort(r["budget"]))):
        acc = r.get("accuracy")
        cell = "–" if acc is None else f"{100 * acc:.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"
        row = [_label(r), _budget_label(r["budget"]), cell]
        if norm:
            row.append("–" if r.get("acc_norm") is None else f"{100 * r['acc_norm']:.1f}")
        if nll:
            row.append(_fmt(r.get("nll"), ".3f"))
        if think:
            agree, forced = r.get("agreement"), r.get("forced")
            row += [_fmt(r.get("think_tokens"), ".1f"), "–" if agree is None else f"{100 * agree:.1f}",
                    "–" if forced is None else f"{100 * forced:.0f}%"]
        flops = r.get("flops_per_token")
        row.append(_fmt(r.get("realized_layers"), ".3f"))
        if sets:
            share = r.get("modal_set_share")
            row.append("–" if share is None else f"{r['layer_sets']} ({100 * share:.0f}%)")
        row += [_fmt(r.get("realized_groups"), ".3f"),
                _fmt(r.get("seconds_per_item"), ".3f"), "–" if flops is None else f"{flops / 1e9:.3f}", str(r.get("n"))]
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'l2a[plot]' (or call report(..., plots=False))") from None
    return plt


def plot(lines: list[dict], x_key: str, x_label: str, title: str, path, x_scale: float = 1.0,
         y_key: str = "accuracy", y_label: str = "accuracy (%)") -> Path:
    """`y_key` vs `x_key`, one curve per method (and axis), the frontier over all of them highlighted."""
    plt = _matplotlib()
    pts = [r for r in lines if _finite(r.get(x_key), r.get(y_key))]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    markers = "osD^vPX<>p"
    methods = [m for m in dict.fromkeys(_label(r) for r in pts) if m != "dense"]
    for k, method in enumerate(methods):
        rs = sorted((r for r in pts if _label(r) == method), key=lambda r: r[x_key])
        ax.plot([r[x_key] / x_scale for r in rs], [100 * r[y_key] for r in rs], marker=markers[k % len(markers)],
                linestyle="-", label=method, alpha=0.75, markersize=7 - 0.5 * (k % 4))  # overlaps stay visible
    dense = [r for r in pts if r["method"] == "dense"]
    if dense:
        ax.plot([r[x_key] / x_scale for r in dense], [100 * r[y_key] for r in dense], "k*", markersize=13,
                label="dense", zorder=4)
    front = sorted((pts[i] for i in pareto_front([(r[x_key], r[y_key]) for r in pts])), key=lambda r: r[x_key])
    if front:
        fx, fy = [r[x_key] / x_scale for r in front], [100 * r[y_key] for r in front]
        ax.step(fx, fy, where="post", color="black", linestyle="--", linewidth=1.2, zorder=3, label="Pareto frontier")
        ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", linewidths=1.5, zorder=5)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "data"


def _dense_task(task: str | None) -> str | None:
    """The task whose prompts this one's uncapped rows share (tasks.GSM8KBudget -> gsm8k); else itself."""
    from .tasks import TASKS

    return getattr(TASKS.get(task), "dense_task", task)


def _families(groups: dict) -> list[tuple[str, str | None, list[dict]]]:
    """(family, data, lines) where several tasks of one family (tasks.GSM8K.family) ran on the same data;
    curves are named `method (task)` outside the family's own task, reused dense lines dropped."""
    from .tasks import TASKS

    fams: dict = {}
    for (task, data), rs in groups.items():
        fam = getattr(TASKS.get(task), "family", None)
        if fam is not None and any(r.get("think_tokens") for r in rs):
            fams.setdefault((fam, data), []).append((task, rs))
    out = []
    for (fam, data), members in fams.items():
        if len(members) > 1:
            lines = [r if task == fam else dict(r, method=f"{r['method']} ({task})")
                     for task, rs in members for r in rs if not (task != fam and r.get("reused_from"))
                     and (r.get("axis") == "think" or r["method"] == "dense")]  # the think axis alone
            out.append((fam, data, lines))
    return out


def report(results_path, out_dir=None, plots: bool = True) -> dict:
    """Write `report.md` (and the plots) for `results_path` into `out_dir`; return what was written.

    out_dir defaults to `<results stem>_report/` beside the results file. Returns {"markdown": path,
    "plots": [paths], "sparsity": {(task, data): {method: sparsity or None}}, "sparsity_confident": the same
    where the paired 95% CI of the difference to dense stays above -1 point}.
    """
    from .results import read_results

    if not os.path.exists(results_path):
        raise FileNotFoundError(f"no results file {os.fspath(results_path)!r}; run `l2a eval ... --out FILE` first")
    lines = [r for r in read_results(results_path) if "method" in r and "accuracy" in r]
    if not lines:
        raise ValueError(f"{results_path}: no evaluation lines (expected JSON lines written by `l2a eval`)")
    if plots:
        _matplotlib()  # fail before writing anything when the plot extra is missing
    out = Path(out_dir) if out_dir is not None else Path(results_path).with_name(Path(results_path).stem + "_report")
    out.mkdir(parents=True, exist_ok=True)
    groups: dict = {}
    for r in lines:
        groups.setdefault((r.get("task"), r.get("data")), []).append(r)
    md = [f"# l2a evaluation report\n\nFrom `{results_path}`. Accuracy in %, 95% bootstrap CI over items; "
          "s/item measured wall clock; GFLOP/token modeled (decode, at the item's length).\n"]
    written, sparsity, confident = [], {}, {}
    for (task, data), rs in groups.items():
        name = Path(data).stem if data else "default"
        model = rs[0].get("config", {}).get("model")
        md.append(f"## {task} — {data or 'default data'}" + (f" — {model}" if model else "") + "\n")
        md.append(markdown_table(rs) + "\n")
        timing = {(t["repeats"], t["items"], t.get("unit", "pass"), t.get("estimate", "median"))
                  for t in (r.get("timing") for r in rs) if t and t.get("method") == "interleaved"}
        if len(timing) == 1 and all(r.get("timing") for r in rs):
            (repeats, items, unit, estimate), = timing
            md.append(f"s/item: {estimate} of {repeats} interleaved rounds on the first {items} items, every point "
                      f"timed together (`--timing-repeats`), interleaved {'batch by batch' if unit == 'batch' else 'pass by pass'}"
                      f"{' (each round’s common speed divided out)' if estimate.startswith('round') else ''}; "
                      "single-pass timings in the results file (`seconds_per_item_single`).\n")
        else:
            md.append("s/item: each point timed once, during its own scoring pass (not interleaved with the others).\n")
        sp = sparsity_within(rs)
        sparsity[(task, data)] = sp
        sure = sparsity_within(rs, confident=True)
        confident[(task, data)] = sure
        md.append("Largest layer sparsity within 1 point of dense accuracy (and where the paired 95% CI of the "
                  "difference to dense stays above -1 point):\n")
        for method, s in sp.items():
            md.append(f"- {method}: " + ("none" if s is None else f"{100 * s:.1f}% of layers skipped")
                      + ("" if method not in sure else "; with 95% confidence: "
                         + ("none" if sure[method] is None else f"{100 * sure[method]:.1f}%")))
        md.append("")
        learned = [n for n in dict.fromkeys(r["method"] for r in rs)  # each learned mode on its own (+bridges too)
                   if n.removesuffix("+bridges") in LEARNED]
        for me, (x, what, unit, scale) in itertools.product(learned, (
                ("seconds_per_item", "measured latency", "s/item", 1.0), ("flops_per_token", "modeled FLOPs", "GFLOP/token", 1e-9))):
            y_key, rows = at_equal_latency(rs, learned=me, x=x)
            if not rows:
                continue
            pct, f = (1.0, ".3f") if y_key == "nll" else (100.0, ".1f")
            md.append(f"{me} vs the best static point of each budget at equal {what} ({y_key}; {me}'s "
                      f"curve through its points and dense, interpolated at the static point's {unit}):\n")
            md.append(f"| budget | best static | its {y_key} | its {unit} | {me} at that {unit} | gain |\n|---|---|---|---|---|---|")
            md += [f"| {r['budget']:g} | {r['static']} | {pct * r['static_y']:{f}} | {scale * r['x']:.4f} | "
                   + (f"– (outside {me}'s range) | – |" if r["gain"] is None else
                      f"{pct * r['learned_y']:{f}} | {_gain_cell(r, pct, f)} |") for r in rows]
            md.append(f"\n{me} above the best static point at equal {what} at {_tally(rows)} budgets.\n")
            md.append(f"The other direction: each {me} point against the best static curve interpolated at its {unit}:\n")
            md.append(f"| budget | {me} {y_key} | its {unit} | best static curve there | gain |\n|---|---|---|---|---|")
            back = static_at_learned(rs, learned=me, x=x)[1]
            md += [f"| {r['budget']:g} | {pct * r['learned_y']:{f}} | {scale * r['x']:.4f} | "
                   + ("– (no static curve spans it) | – |" if r["gain"] is None else
                      f"{r['static']} {pct * r['static_y']:{f}} | {_gain_cell(r, pct, f)} |") for r in back]
            md.append(f"\n{me} above the best static curve at its {unit} at {_tally(back)} points.\n")
        twin = _dense_task(task)
        baselines = [(rs, "a fixed cap", twin == task)] + (  # (caps, named, dense ends the cap curve)
            [(groups[(twin, data)], f"`{twin}`'s fixed cap (its prompt, s1-style)", True)] if (twin, data) in groups else [])
        for (base, what, end), y_key in itertools.product(baselines, ("agreement", "accuracy")):
            rows = at_equal_think(rs, y_key, base, dense_end=end)
            if rows and any(r["gain"] is not None for r in rows):
                md.append(f"Learned allowance vs {what} at equal mean think tokens ({y_key}, %):\n")
                md.append("| think tokens | l2a | think-cap (interpolated) | gain |\n|---|---|---|---|")
                md += [f"| {r['think_tokens']:.1f} | {100 * r['l2a']:.1f} | " + ("–" if r["gain"] is None else
                       f"{100 * r['think-cap']:.1f} | {100 * r['gain']:+.1f}") + (" | – |" if r["gain"] is None else " |")
                       for r in rows]
                md.append("")
        ranked = rank_schedules(rs)
        if ranked:
            md.append("Scalar schedules, best first by the area their points dominate in (measured s/item, agreement) "
                      "up to dense's s/item:\n")
            md += [f"- {name}: area {hv:.4f}, mean agreement {100 * y:.1f}%" for name, hv, y in ranked]
            md.append("")
        if plots:
            stem = _slug(f"{task}_{name}")
            title = f"{task} {name}" + (f" ({model})" if model else "")
            views = [("seconds_per_item", "seconds per item (measured)", 1.0, "seconds", "accuracy"),
                     ("flops_per_token", "GFLOP per token (modeled)", 1e9, "flops", "accuracy")]
            if any(r.get("think_tokens") for r in rs):
                views.append(("think_tokens", "mean think tokens", 1.0, "think", "accuracy"))
            if any(r.get("agreement") is not None for r in rs):
                views.append(("think_tokens", "mean think tokens", 1.0, "think_agreement", "agreement"))
            for key, label, scale, suffix, y in views:
                if not any(_finite(r.get(key), r.get(y)) for r in rs):
                    continue  # nothing measured on this axis (e.g. lines without timings)
                p = plot(rs, key, label, title, out / f"{stem}_{suffix}.png", scale, y_key=y,
                         y_label="answer agreement with dense (%)" if y == "agreement" else "accuracy (%)")
                written.append(p)
                md.append(f"![{title}: {y} vs {label}]({p.name})\n")
    for fam, data, rs in _families(groups):
        if plots:  # one plot across the family's prompts (e.g. gsm8k's s1-style caps beside gsm8k-budget)
            name = Path(data).stem if data else "default"
            title = f"{fam} family {name}"
            p = plot(rs, "think_tokens", "mean think tokens", title, out / _slug(f"{fam}_family_{name}_think.png"))
            written.append(p)
            md.append(f"## {fam} family — {data or 'default data'}\n\n![{title}: accuracy vs mean think tokens]({p.name})\n")
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return {"markdown": md_path, "plots": written, "sparsity": sparsity, "sparsity_confident": confident}
