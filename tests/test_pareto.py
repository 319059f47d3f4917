"""pareto: the frontier as a property, and the report (table, plots, sparsity) from a synthetic results file."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l2a.pareto import dominates, pareto_front, report, sparsity_within

coords = st.floats(0, 10, allow_nan=False).map(lambda x: round(x, 1))  # rounding makes ties common


@given(st.lists(st.tuples(coords, coords), max_size=30))
def test_front_is_exactly_the_non_dominated_points(points):
    front = pareto_front(points)
    assert front == sorted(set(front))
    on = set(front)
    for i in on:  # nothing dominates a front point
        assert not any(dominates(q, points[i]) for q in points)
    for i in set(range(len(points))) - on:  # every other point is dominated by a front point
        assert any(dominates(points[j], points[i]) for j in on)


def test_front_by_hand():
    pts = [(1, 0.5), (2, 0.6), (2, 0.55), (3, 0.6), (0.5, 0.2), (2, 0.6)]
    assert pareto_front(pts) == [0, 1, 4, 5]


def line(method, budget, acc, layers, s, flops, data="mc/arc_easy.jsonl"):
    return {"method": method, "task": "mc", "data": data, "budget": budget, "n": 40, "accuracy": acc,
            "ci_low": acc - 0.05, "ci_high": acc + 0.05, "acc_norm": acc, "realized_layers": layers,
            "realized_groups": 1.0, "seconds_per_item": s, "flops_per_token": flops, "config": {"model": "tiny"}}


LINES = [
    line("dense", 1.0, 0.60, 1.0, 1.0, 2e8),
    line("even-spaced", 0.85, 0.595, 0.833, 0.9, 1.7e8),
    line("even-spaced", 0.7, 0.50, 0.7, 0.8, 1.4e8),
    line("angular", 0.85, 0.61, 0.833, 0.85, 1.7e8),
    line("angular", 0.7, 0.592, 0.7, 0.75, 1.4e8),
    line("drop-last", 0.7, 0.30, 0.7, 0.7, 1.4e8),
    line("dense", 1.0, 0.40, 1.0, 1.0, 2e8, data="mc/piqa.jsonl"),
]


def test_sparsity_within_one_point():
    sp = sparsity_within(LINES[:6])
    assert sp["angular"] == pytest.approx(0.3) and sp["even-spaced"] == pytest.approx(1 - 0.833)
    assert sp["drop-last"] is None and "dense" not in sp


def test_report_writes_table_plots_and_sparsity(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in LINES))
    got = report(results, tmp_path / "rep")
    md = got["markdown"].read_text()
    assert "| angular | 0.7 | 59.2 [54.2, 64.2] |" in md and "## mc — mc/piqa.jsonl" in md
    assert "- angular: 30.0% of layers skipped" in md and "- drop-last: none" in md
    assert len(got["plots"]) == 4
    for p in got["plots"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert got["sparsity"][("mc", "mc/arc_easy.jsonl")]["angular"] == pytest.approx(0.3)
    default = report(results, plots=False)  # default out dir beside the results
    assert default["markdown"] == tmp_path / "results_report" / "report.md"
    assert md.count("each point timed once") == 2  # how s/item was measured, per data file
    timed = [dict(r, timing={"method": "interleaved", "repeats": 5, "items": 100}) for r in LINES]
    results.write_text("".join(json.dumps(r) + "\n" for r in timed[:6] + LINES[6:]))
    md = report(results, plots=False)["markdown"].read_text()
    assert md.count("median of 5 interleaved rounds on the first 100 items") == 1 and md.count("each point timed once") == 1
    assert "layer sets" not in md  # lines written before the field carry no column
    varied = [dict(r, layer_sets=3 if r["method"] == "angular" else 1, modal_set_share=0.874 if r["method"] == "angular" else 1.0)
              for r in LINES]
    results.write_text("".join(json.dumps(r) + "\n" for r in varied))
    md = report(results, plots=False)["markdown"].read_text()
    assert "| layers | layer sets (modal) |" in md and "| 0.700 | 3 (87%) |" in md and "| 1.000 | 1 (100%) |" in md


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="l2a eval"):
        report(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no evaluation lines"):
        report(tmp_path / "empty.jsonl")


def test_hypervolume_and_schedule_ranking():
    from l2a.pareto import hypervolume, rank_schedules

    assert hypervolume([(1.0, 0.5)], 3.0) == pytest.approx(1.0)
    assert hypervolume([(1.0, 0.5), (2.0, 0.8)], 3.0) == pytest.approx(0.5 + 0.8)  # [1,2)x0.5 + [2,3)x0.8
    assert hypervolume([(1.0, 0.5), (2.0, 0.4)], 3.0) == pytest.approx(1.0)  # a dominated point adds nothing
    assert hypervolume([(4.0, 0.9)], 3.0) == 0.0  # slower than the reference: nothing

    def line(method, axis, s, agree):
        return {"method": method, "axis": axis, "seconds_per_item": s, "agreement": agree, "accuracy": 0.0}

    lines = [line("dense", "all", 3.0, 1.0), line("l2a", "all:a", 1.0, 0.5), line("l2a", "all:a", 2.0, 0.8),
             line("l2a", "all:b", 1.0, 0.4), line("l2a", "all:b", 3.5, 0.99), line("l2a", "think", 0.5, 0.99)]
    ranked = rank_schedules(lines)  # a: 1.3; b: 0.8 (its 3.5 s point is slower than dense); "think" is no schedule
    assert [name for name, *_ in ranked] == ["a", "b"]
    assert ranked[0][1] == pytest.approx(1.3) and ranked[1][1] == pytest.approx(0.8)


def test_at_equal_think_interpolates_the_fixed_cap():
    from l2a.pareto import at_equal_think
    from l2a.equalcost import interpolate

    assert interpolate([(0, 0.0), (10, 1.0)], 2.5) == 0.25 and interpolate([(0, 0.0), (10, 1.0)], 11) is None

    def line(method, tokens, agree, axis="think"):
        return {"method": method, "axis": axis, "think_tokens": tokens, "agreement": agree}

    lines = [line("think-cap", 50, 0.2), line("think-cap", 150, 0.6), line("l2a", 100, 0.5), line("l2a", 200, 0.9),
             line("l2a", 120, 0.0, axis="layers")]  # another axis: not compared
    rows = at_equal_think(lines, "agreement")
    assert [r["think_tokens"] for r in rows] == [100, 200]
    assert rows[0]["think-cap"] == pytest.approx(0.4) and rows[0]["gain"] == pytest.approx(0.1)
    assert rows[1]["think-cap"] is None and rows[1]["gain"] is None  # beyond the caps' range: no claim
    dense = {"method": "dense", "axis": "all", "think_tokens": 250, "agreement": 1.0}  # the cap curve's end
    rows = at_equal_think(lines + [dense], "agreement")
    assert rows[1]["think-cap"] == pytest.approx(0.6 + 0.4 * 50 / 100) and rows[1]["gain"] == pytest.approx(0.9 - 0.8)
    # another task's caps (s1-style on gsm8k for gsm8k-budget's allowances): only the baseline's curve is read
    other = [line("think-cap", 50, 0.0), line("think-cap", 150, 0.2), line("l2a", 100, 0.99)]
    rows = at_equal_think(lines, "agreement", baseline=other)
    assert rows[0]["think-cap"] == pytest.approx(0.1) and rows[0]["gain"] == pytest.approx(0.4)


def test_report_compares_budget_aware_prompting_with_the_plain_tasks_caps(tmp_path):
    def line(task, method, tokens, acc, axis="think", budget=0.5):
        return {"task": task, "data": "t.jsonl", "method": method, "budget": budget, "axis": axis, "n": 10,
                "think_tokens": tokens, "accuracy": acc, "ci_low": acc, "ci_high": acc}

    lines = [line("gsm8k", "dense", 300, 0.55, "all", 1.0), line("gsm8k", "think-cap", 100, 0.1),
             line("gsm8k", "think-cap", 200, 0.3), line("gsm8k-budget", "dense", 300, 0.55, "all", 1.0),
             line("gsm8k-budget", "think-cap", 100, 0.35), line("gsm8k-budget", "think-cap", 300, 0.55),
             line("gsm8k-budget", "l2a", 200, 0.5)]
    from l2a.pareto import at_equal_think

    own = [line("gsm8k-budget", "dense", 300, 0.55, "all", 1.0), line("gsm8k-budget", "think-cap", 100, 0.35),
           line("gsm8k-budget", "l2a", 200, 0.5)]
    assert at_equal_think(own, "accuracy")[0]["gain"] is not None  # dense (plain prompt) would end the cap curve
    assert at_equal_think(own, "accuracy", dense_end=False)[0]["gain"] is None  # ... not for budget-aware prompts
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in lines))
    md = report(results, plots=False)["markdown"].read_text()
    budget = md.split("## gsm8k-budget")[1]
    assert "Learned allowance vs a fixed cap at equal mean think tokens (accuracy, %)" in budget
    assert "| 200.0 | 50.0 | 45.0 | +5.0 |" in budget  # its own caps: 35 at 100 .. 55 at 300
    assert "Learned allowance vs `gsm8k`'s fixed cap (its prompt, s1-style) at equal mean think tokens (accuracy, %)" in budget
    assert "| 200.0 | 50.0 | 30.0 | +20.0 |" in budget  # gsm8k's caps: 10 at 100, 30 at 200
    assert "s1-style" not in md.split("## gsm8k-budget")[0]
    got = report(results, tmp_path / "plots")  # one plot across the family: gsm8k's curves beside gsm8k-budget's
    family = [p for p in got["plots"] if p.name == "gsm8k_family_t_think.png"]
    assert family and family[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## gsm8k family — t.jsonl" in got["markdown"].read_text()


def test_at_equal_latency_interpolates_the_learned_curve_at_each_best_static_point():
    from l2a.equalcost import at_equal_latency, static_at_learned

    def line(method, budget, s, acc, nll=None):
        r = {"method": method, "budget": {"layers": budget}, "axis": "layers", "seconds_per_item": s, "accuracy": acc}
        return r if nll is None else dict(r, nll=nll)

    lines = [dict(line("dense", 1.0, 1.0, 0.60), axis="all"), line("l2a", 1.0, 1.0, 0.60),
             line("l2a", 0.8, 0.8, 0.50), line("l2a", 0.6, 0.6, 0.40),
             line("angular", 0.8, 0.7, 0.46), line("block-influence", 0.8, 0.75, 0.44),  # best at 0.8: angular
             line("angular", 0.6, 0.5, 0.30), line("l2a-strict", 0.6, 0.55, 0.9)]  # faster than every l2a point
    y, rows = at_equal_latency(lines)
    assert y == "accuracy" and [r["budget"] for r in rows] == [0.8, 0.6]
    assert rows[0]["static"] == "angular" and rows[0]["learned_y"] == pytest.approx(0.45)  # 0.40 + 0.1 * 0.5
    assert rows[0]["gain"] == pytest.approx(-0.01)
    assert rows[1]["learned_y"] is None and rows[1]["gain"] is None  # l2a-strict is not a static baseline
    # NLL (lower is better) when every line has it: the best static is the lowest, the gain's sign flips
    nll = [dict(r, nll=2.0 - r["accuracy"]) for r in lines]
    y, rows = at_equal_latency(nll)
    assert y == "nll" and rows[0]["static"] == "angular" and rows[0]["gain"] == pytest.approx(-0.01)
    # the other direction: static curves (with dense) at each l2a point's latency, the best of them
    y, rows = static_at_learned(lines)
    assert [r["budget"] for r in rows] == [0.8, 0.6]
    # at 0.8 s: angular (0.7, 0.46)-(1.0, 0.60) gives 0.50667, BI (0.75, 0.44)-(1.0, 0.60) gives 0.472
    assert rows[0]["static"] == "angular" and rows[0]["gain"] == pytest.approx(0.50 - (0.46 + 0.14 / 3))
    assert rows[1]["static"] == "angular" and rows[1]["static_y"] == pytest.approx(0.38)  # (0.5, 0.30)-(0.7, 0.46)
    y, rows = static_at_learned(nll)
    assert rows[1]["gain"] == pytest.approx(0.02)  # NLL 1.60 against the curve's 1.62: lower is better
    # at equal modeled FLOPs: the same comparison on `flops_per_token`, whatever the clock said
    flops = [dict(r, flops_per_token=r["seconds_per_item"], seconds_per_item=0.95 if r["method"] == "angular"
                  else r["seconds_per_item"]) for r in lines]
    y, rows = at_equal_latency(flops, x="flops_per_token")
    assert rows[0]["learned_y"] == pytest.approx(0.45) and rows[0]["x"] == 0.7
    assert at_equal_latency(flops)[1][0]["learned_y"] == pytest.approx(0.575)  # on the (slow) clock: 0.50 + 0.15 * 0.5
    assert static_at_learned(flops, x="flops_per_token")[1][0]["gain"] == pytest.approx(0.50 - (0.46 + 0.14 / 3))


def test_paired_ci_is_the_difference_over_jointly_resampled_items():
    import numpy as np

    from l2a import paired

    rng = np.random.default_rng(1)
    b = (rng.random(500) < 0.5).astype(float)  # (500,) a baseline's item scores
    a = b.copy()
    a[np.flatnonzero(b == 0)[:15]] = 1.0  # the method fixes 15 items and breaks none: +3 points
    w = np.ones(500)
    lo, hi = paired.diff_ci(a, b, w)
    assert 0 < lo <= 0.03 <= hi < 0.06  # paired: clearly above zero
    unpaired = 1.96 * np.sqrt(a.var() / 500 + b.var() / 500)  # about ±6 points: would span zero
    assert hi - lo < unpaired and 0.03 - unpaired < 0
    assert paired.diff_ci(b, b, w) == (0.0, 0.0)
    assert paired.diff_ci(a, b, w, sign=-1.0) == pytest.approx((-hi, -lo))
    with pytest.raises(ValueError, match="same items"):
        paired.diff_ci(a[:10], b, w)
    # NLL per token: sum over items of each item's NLL over the sum of its tokens, the same for both
    tok = rng.integers(5, 50, 500).astype(float)
    nll_a, nll_b = tok * 1.0, tok * 1.2  # 1.0 against 1.2 per token on every item
    assert paired.diff_ci(nll_a, nll_b, tok, sign=-1.0) == pytest.approx((0.2, 0.2))  # lower is better


def test_equal_cost_rows_carry_paired_cis_and_confident_sparsity(tmp_path):
    import numpy as np

    from l2a.equalcost import at_equal_latency, static_at_learned

    n = 2000
    rng = np.random.default_rng(0)
    dense = (rng.random(n) < 0.6).astype(float)

    def line(method, budget, s, items):
        items = np.asarray(items, dtype=float)
        return {"method": method, "budget": {"layers": budget}, "axis": "layers", "seconds_per_item": s,
                "accuracy": float(items.mean()), "ci_low": 0.0, "ci_high": 1.0, "n": n, "item_scores": items.tolist(),
                "realized_layers": budget}

    def breaking(k):  # dense with its first k right items wrong
        x = dense.copy()
        x[np.flatnonzero(dense == 1)[:k]] = 0
        return x

    lines = [dict(line("dense", 1.0, 1.0, dense), axis="all"), line("l2a", 0.7, 0.7, breaking(8)),
             line("angular", 0.7, 0.7, breaking(100)), line("l2a", 0.5, 0.5, breaking(300))]
    y, rows = at_equal_latency(lines)
    (row,) = rows
    assert row["gain"] == pytest.approx(92 / n) and 0 < row["ci"][0] < row["gain"] < row["ci"][1]
    # the other direction at 0.5: angular's curve is extrapolated nowhere, so no static curve spans it
    back = static_at_learned(lines)[1]
    assert back[0]["ci"][0] > 0 and back[1]["gain"] is None and back[1]["ci"] is None
    # within 1 point of dense: l2a 0.7 loses 0.4 points, with a paired lower bound above -1 point
    assert sparsity_within(lines)["l2a [layers]"] == pytest.approx(0.3)
    assert sparsity_within(lines, confident=True)["l2a [layers]"] == pytest.approx(0.3)
    close = [lines[0], line("l2a", 0.7, 0.7, breaking(19))]  # -0.95 points: within 1, but not with confidence
    assert sparsity_within(close)["l2a [layers]"] == pytest.approx(0.3)
    assert sparsity_within(close, confident=True)["l2a [layers]"] is None
    old = [{k: v for k, v in r.items() if k != "item_scores"} for r in lines]  # lines without items: no CI
    assert at_equal_latency(old)[1][0]["ci"] is None and sparsity_within(old, confident=True) == {}
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(dict(r, task="mc", data="d.jsonl")) + "\n" for r in lines))
    md = report(results, plots=False)["markdown"].read_text()
    assert "l2a above the best static point at equal measured latency at 1 of 1 (paired 95% CI above zero at 1" in md
    assert "- l2a [layers]: 30.0% of layers skipped; with 95% confidence: 30.0%" in md
    # each learned mode is compared alone: l2a-exact's point is neither a static point nor part of l2a's curve
    exact = lines + [line("l2a-exact", 0.7, 0.7, breaking(200))]
    results.write_text("".join(json.dumps(dict(r, task="mc", data="d.jsonl")) + "\n" for r in exact))
    md = report(results, plots=False)["markdown"].read_text()
    assert "l2a above the best static point at equal measured latency at 1 of 1 (paired 95% CI above zero at 1" in md
    assert "l2a-exact above the best static point at equal measured latency at 0 of 1 (paired 95% CI above zero at 0, below zero at 1" in md


def test_paired_recipes_script_compares_artifacts_item_by_item(tmp_path, capsys):
    import runpy
    from pathlib import Path

    main = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "paired_recipes.py"))["main"]
    paths = []
    for name, flips in (("a", 0), ("b", 30)):  # b gets 30 more of 200 items right at 0.7, the same at 0.5
        lines = []
        for budget in (0.7, 0.5):
            items = [1.0] * 80 + [0.0] * 120
            if budget == 0.7:
                items[80:80 + flips] = [1.0] * flips
            lines.append({"method": "l2a", "task": "mc", "data": "x/arc.jsonl", "budget": {"layers": budget},
                          "accuracy": sum(items) / 200, "n": 200, "realized_layers": budget, "item_scores": items})
        p = tmp_path / f"{name}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in lines))
        paths.append(f"{name}={p}")
    assert main(paths) == 0
    out = capsys.readouterr().out
    assert "| arc | 0.7 | 40.0 (0.70) | 55.0 (0.70) | +15.0 [+10." in out  # every flip one way: a tight CI
    assert "| arc | 0.5 | 40.0 (0.50) | 40.0 (0.50) | +0.0 [+0.0, +0.0] |" in out
    assert "| mean of 2 accuracy cells | – | – | – | +7.5 [" in out
    assert main(["a.jsonl"]) == 2  # NAME=FILE pairs, at least two
    assert main([paths[0], f"c={tmp_path / 'missing.jsonl'}"]) == 1
    assert "missing.jsonl: no l2a lines" in capsys.readouterr().err


def test_scoreboard_holds_every_recipe_to_the_pooled_static_bar(tmp_path, capsys):
    import runpy
    from pathlib import Path
    main = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "scoreboard.py"))["main"]

    def line(method, budget, flops, right, seconds=None):  # 100 items, the first `right` correct
        items = [1.0] * right + [0.0] * (100 - right)
        return {"method": method, "task": "mc", "data": "x/arc.jsonl", "budget": {"layers": budget}, "n": 100,
                "accuracy": right / 100, "flops_per_token": flops, "realized_layers": budget, "item_scores": items,
                "seconds_per_item": flops / 10 if seconds is None else seconds}

    def write(name, lines):
        p = tmp_path / name
        p.write_text("".join(json.dumps(r) + "\n" for r in lines))
        return str(p)

    pool_a = write("a.jsonl", [line("dense", 1.0, 10.0, 60), line("angular", 0.7, 7.0, 40)])
    pool_b = write("b.jsonl", [line("dense", 1.0, 10.0, 60), line("angular", 0.7, 7.0, 45)])  # a better calibration
    # the recipe's own file carries a static line far better than the pool's: it must not move the bar
    recipe = write("r.jsonl", [line("dense", 1.0, 10.0, 60), line("angular", 0.7, 7.0, 59), line("l2a", 0.7, 7.0, 50)])
    out = tmp_path / "s.jsonl"
    assert main(["--static", pool_a, f"{pool_b}:+more", "--recipe", f"r={recipe}", "--out", str(out), "--ci"]) == 0
    assert "| r (l2a) | **+5.0 [+" in capsys.readouterr().out  # 50 against angular+more's 45: every item one way
    row, = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["static"] == "angular+more" and abs(row["gain"] - 0.05) < 1e-9 and row["ci"][0] > 0
    # without the suffix the second file's angular point is the same point as the first's: the first wins
    assert main(["--static", pool_a, pool_b, "--recipe", f"r={recipe}", "--out", str(out)]) == 0
    assert abs(json.loads(out.read_text())["gain"] - 0.10) < 1e-9
    capsys.readouterr()
    # at equal measured latency: the same learned point, measured slower than its FLOPs say (0.85 s against the
    # static curve's 0.7 s at 7 FLOPs), meets the bar interpolated at 0.85 s: 45 + (60 - 45) / 2 = 52.5 > 50
    slow = write("slow.jsonl", [line("l2a", 0.7, 7.0, 50, seconds=0.85)])
    assert main(["--static", pool_a, f"{pool_b}:+more", "--recipe", f"r={slow}", "--out", str(out)]) == 0
    assert abs(json.loads(out.read_text())["gain"] - 0.05) < 1e-9  # by FLOPs, as above
    assert main(["--static", pool_a, f"{pool_b}:+more", "--recipe", f"r={slow}", "--x", "seconds", "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["static"] == "angular+more" and abs(row["gain"] + 0.025) < 1e-9 and abs(row["x"] - 0.85) < 1e-12
    capsys.readouterr()
