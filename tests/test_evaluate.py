"""evaluate(): the fields of a line, resume, seeds, dense once, reuse at b=1, errors (tiny models)."""

import json

import pytest
from chartok import char_tokenizer
from conftest import tiny_model

from l2a import evaluate as E
from l2a.data import generate_gsm8k
from l2a.gated import GatedModel
from l2a.results import read_results
from l2a.static import Calibration

FIELDS = {"method", "task", "data", "budget", "n", "accuracy", "ci_low", "ci_high", "realized_layers",
          "realized_groups", "think_tokens", "flops_per_token", "seconds_per_item", "tokens_per_s", "kv_bytes",
          "source", "config"}


@pytest.fixture
def files(tmp_path):
    mc = tmp_path / "mc.jsonl"
    rows = [{"question": f"What is {i} plus one?", "choices": [str(i + 1), str(i), "seven"], "answer": 0} for i in range(5)]
    rows.append({"question": "", "choices": ["The dog sat.", "The dog flew."], "answer": 0})
    mc.write_text("".join(json.dumps(r) + "\n" for r in rows))
    math = tmp_path / "math.jsonl"
    math.write_text("".join(json.dumps(r) + "\n" for r in generate_gsm8k(6)))
    return mc, math


@pytest.fixture
def gm():
    return GatedModel(tiny_model("llama", n_layers=4), tokenizer=char_tokenizer())


def run(gm, files, out, **kw):
    mc, math = files
    args = dict(task="mc", data_files=[str(mc)], budgets=[1.0, 0.5], methods=["even-spaced", "dense", "block-influence"],
                limit=4, batch_size=3, seeds=2, out=out, calibration=Calibration(path=str(math), n=4, max_tokens=40),
                progress=False)
    args.update(kw)
    return E.evaluate(gm, **args)


def test_lines_resume_and_reuse(gm, files, tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    res = run(gm, files, out)
    assert [(r["method"], r["budget"]) for r in res] == [  # dense first, once, at 1.0
        ("dense", 1.0), ("even-spaced", 1.0), ("even-spaced", 0.5), ("block-influence", 1.0), ("block-influence", 0.5)]
    for r in res:
        assert FIELDS <= set(r) and r["n"] == 4 and r["task"] == "mc" and r["data"] == str(files[0])
        assert 0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1 and 0 <= r["acc_norm"] <= 1
        assert r["think_tokens"] == 0 and r["kv_bytes_source"] == "modeled" and r["config"]["limit"] == 4
    half = res[2]
    assert half["realized_layers"] == 0.75 and half["realized_groups"] == 1.0  # Budget(0.5), think-first: layers 0.5/0.7 -> 3 of 4
    assert half["flops_per_token"] < res[0]["flops_per_token"] and half["kv_bytes"] < res[0]["kv_bytes"]
    assert res[1]["reused_from"] == "dense" and res[1]["accuracy"] == res[0]["accuracy"]
    assert len(out.read_text().splitlines()) == 5

    # Resume: nothing reruns; a torn last line (killed run) is ignored and the point it held is redone.
    monkeypatch.setattr(E, "_run_point", lambda *a, **k: pytest.fail("a finished point ran again"))
    assert run(gm, files, out) == res
    other = files[0].parent / "sub" / ".." / files[0].name  # the same file, spelled another way
    (files[0].parent / "sub").mkdir()
    assert [r["accuracy"] for r in run(gm, files, out, data_files=[str(other)])] == [r["accuracy"] for r in res]
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    monkeypatch.undo()
    again = run(gm, files, out)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in res]  # deterministic
    assert all(json.loads(line) for line in out.read_text().splitlines()[-1:])  # the file parses again
    assert len(read_results(out)) == 5


def test_per_item_values_give_the_line_and_follow_the_file(gm, files, tmp_path):
    res = run(gm, files, None, methods=["dense", "block-influence"], budgets=[0.5])
    for r in res:  # each item's score, in file order: their mean is the accuracy
        assert len(r["item_scores"]) == r["n"] == 4 and set(r["item_scores"]) <= {0.0, 1.0}
        assert sum(r["item_scores"]) / 4 == pytest.approx(r["accuracy"])
    one = run(gm, files, None, methods=["dense"], limit=1)[0]
    assert one["item_scores"] == res[0]["item_scores"][:1]  # the first item scores alike alone
    (nll,) = run(gm, files, None, task="gsm8k-loglik", data_files=[str(files[1])], methods=["dense"], limit=3)
    assert len(nll["item_nll"]) == len(nll["item_tokens"]) == 3 and min(nll["item_tokens"]) > 0
    assert sum(nll["item_nll"]) / sum(nll["item_tokens"]) == pytest.approx(nll["nll"], rel=1e-4)


def test_lines_say_how_many_layer_sets_their_items_ran(gm, files):
    from l2a.decision import GateDecision

    (static,) = run(gm, files, None, methods=["drop-last"], budgets=[0.5])
    assert static["layer_sets"] == 1 and static["modal_set_share"] == 1.0 and static["modal_skipped"] == [3]  # early exit: 3 of 4 layers (think-first 0.5)
    a, b = GateDecision.dropping(4, [1]), GateDecision.dropping(4, [2])
    assert E._diversity([a, b, a, a]) == {"layer_sets": 2, "modal_set_share": 0.75, "modal_skipped": [1]}
    assert E._diversity([a, GateDecision.dropping(4, [1]), b.__class__(layers=b.layers, think_tokens=5)]) == {
        "layer_sets": 2, "modal_set_share": 2 / 3, "modal_skipped": [1]}  # the layer set alone counts, not the think allowance
    assert E._diversity([]) == {"layer_sets": 0, "modal_set_share": None, "modal_skipped": None}


def test_random_averages_over_seeds(gm, files, tmp_path):
    (r,) = run(gm, files, None, methods=["random"], budgets=[0.5], seeds=3)
    assert r["seeds"] == 3 and len(r["accuracy_per_seed"]) == 3
    assert sum(r["item_scores"]) / r["n"] == pytest.approx(r["accuracy"], abs=1e-3)  # items averaged over seeds
    assert r["accuracy"] == pytest.approx(sum(r["accuracy_per_seed"]) / 3)
    from l2a.baselines import kept_count
    from l2a.budget import Budget

    assert r["realized_layers"] == kept_count(4, Budget(0.5).layers) / 4
    # Per-item NLLs are averaged over seeds too, so a paired comparison of NLL reads the line's own NLL.
    def nll_line(seeds):  # at 3 of 4 layers, seed 0 skips layer 1 and seeds 1 and 2 skip layer 2
        return run(gm, files, None, task="gsm8k-loglik", data_files=[str(files[1])], methods=["random"],
                   budgets=[Budget(layers=0.7)], seeds=seeds, limit=3)[0]

    one, three = nll_line(1), nll_line(3)
    assert one["modal_skipped"] == [1] and one["item_nll"] != three["item_nll"]
    assert sum(three["item_nll"]) / sum(three["item_tokens"]) == pytest.approx(three["nll"], rel=1e-3)
    assert three["item_tokens"] == one["item_tokens"]


def test_gsm8k_generation_fields(gm, files, tmp_path):
    gm.hf.generation_config.eos_token_id = None  # never stops: every row generates max_new_tokens
    res = run(gm, files, None, task="gsm8k", data_files=[str(files[1])], methods=["dense", "drop-last"], budgets=[0.5],
              limit=2, max_new_tokens=3)
    assert [r["method"] for r in res] == ["dense", "drop-last"]
    assert all(r["think_tokens"] == 3 and r["kv_bytes_measured"] > 0 for r in res)
    assert res[1]["kv_bytes_measured"] < res[0]["kv_bytes_measured"]


def test_errors_before_running(gm, files):
    with pytest.raises(ValueError, match="unknown method 'nope'; valid:"):
        run(gm, files, None, methods=["dense", "nope"])
    with pytest.raises(ValueError, match="unknown task 'qa'"):
        run(gm, files, None, task="qa")
    with pytest.raises(ValueError, match="no gates loaded"):
        run(gm, files, None, methods=["l2a"])
    with pytest.raises(FileNotFoundError, match="tried"):
        run(gm, files, None, data_files=["missing/none.jsonl"])


def test_bootstrap_ci():
    assert E.bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    lo, hi = E.bootstrap_ci([0, 1] * 50)
    assert lo < 0.5 < hi and (lo, hi) == E.bootstrap_ci([0, 1] * 50)


def test_lm_eval_bridge_matches_our_mc(gm, tmp_path):
    """With lm-eval installed (the `eval` extra), its acc/acc_norm through the bridge equal ours."""
    pytest.importorskip("lm_eval")
    from l2a.harness import mc_task_yaml, run_lm_eval

    mc = tmp_path / "mc.jsonl"
    rows = [{"question": f"What is {i} plus one?", "choices": [str(i + 1), f"{i} or so", "seven"], "answer": i % 3}
            for i in range(6)]
    mc.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mc_task_yaml("l2a_tiny_mc", mc, tmp_path / "tasks")
    for method, budget in (("dense", 1.0), ("even-spaced", 0.5)):
        ours = E.evaluate(gm, "mc", [str(mc)], [budget], [method], progress=False)[-1]
        got = run_lm_eval(gm, ["l2a_tiny_mc"], method=method, budget=budget, include_path=tmp_path / "tasks")
        res = got["results"]["l2a_tiny_mc"]
        assert res["acc,none"] == pytest.approx(ours["accuracy"]) and res["acc_norm,none"] == pytest.approx(ours["acc_norm"])
        assert got["l2a"]["realized_layers"] == ours["realized_layers"]


def test_lm_eval_missing_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_lm_eval(name, *a, **k):
        if name.startswith("lm_eval"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    from l2a import harness

    with pytest.raises(ImportError, match=r"l2a\[eval\]"):
        harness.run_lm_eval(None, ["x"])


def test_lm_eval_bridge_generates_with_decisions(gm, files, tmp_path):
    pytest.importorskip("lm_eval")
    from l2a.harness import math_task_yaml, run_lm_eval

    gm.hf.generation_config.eos_token_id = None
    math_task_yaml("l2a_tiny_math", files[1], tmp_path / "tasks", max_gen_toks=3)
    got = run_lm_eval(gm, ["l2a_tiny_math"], method="drop-last", budget=0.5, limit=2, include_path=tmp_path / "tasks")
    assert "exact_match,last-number" in got["results"]["l2a_tiny_math"]
    assert got["l2a"]["realized_layers"] == 0.5


def test_think_axis_points_agreement_and_forced_answers(gm, files, tmp_path):
    gm.hf.generation_config.eos_token_id = 1
    out = tmp_path / "think.jsonl"
    res = E.evaluate(gm, task="gsm8k", data_files=[str(files[1])], budgets=[1.0, 0.05], methods=["dense", "think-cap"],
                     limit=4, batch_size=2, seeds=1, out=out, max_new_tokens=40, axes=("think", "layers"), progress=False)
    by = {(r["method"], r.get("axis"), json.dumps(r["budget"], sort_keys=True)): r for r in res}
    dense = by[("dense", "all", "1.0")]
    assert dense["agreement"] == 1.0 and len(dense["predictions"]) == 4 and dense["forced"] == 0.0
    capped = by[("think-cap", "think", json.dumps({"heads": 1.0, "layers": 1.0, "think": 0.05}, sort_keys=True))]
    assert capped["budget_axes"] == {"layers": 1.0, "heads": 1.0, "think": 0.05}
    assert capped["think_tokens"] <= round(0.05 * 256) and capped["forced"] > 0  # 13-token cap, forced answers
    assert 0.0 <= capped["agreement"] <= 1.0
    assert sum(p is not None for p in capped["predictions"]) >= round(capped["forced"] * 4)  # forced rows parse
    assert capped["realized_layers"] == 1.0
    # the layer axis alone: think-cap keeps even-spaced layers and caps nothing
    layers = by[("think-cap", "layers", json.dumps({"heads": 1.0, "layers": 0.05, "think": 1.0}, sort_keys=True))]
    assert layers["realized_layers"] < 1.0 and layers["forced"] == 0.0
    # at 1.0 on any axis think-cap is dense: its line is reused
    full = [r for r in res if r["method"] == "think-cap" and r["budget_axes"] == {"layers": 1.0, "heads": 1.0, "think": 1.0}]
    assert full and all(r.get("reused_from") == "dense" for r in full)
    # a later run without dense still compares with the file's dense line
    (later,) = E.evaluate(gm, task="gsm8k", data_files=[str(files[1])], budgets=[0.1], methods=["think-cap"], limit=4,
                          batch_size=2, seeds=1, out=out, max_new_tokens=40, axes=("think",), progress=False)
    pairs = list(zip(later["predictions"], dense["predictions"]))
    assert later["agreement"] == sum(p == q for p, q in pairs) / 4
    # gsm8k-budget prompts uncapped rows as gsm8k does: its dense line is gsm8k's, labelled, and compared with
    (twin, cap) = E.evaluate(gm, task="gsm8k-budget", data_files=[str(files[1])], budgets=[0.1], methods=["dense", "think-cap"],
                             limit=4, batch_size=2, seeds=1, out=out, max_new_tokens=40, axes=("think",), progress=False)
    assert twin["task"] == "gsm8k-budget" and twin["reused_from"] == "gsm8k dense"
    assert twin["predictions"] == dense["predictions"] and twin["accuracy"] == dense["accuracy"]
    assert cap["task"] == "gsm8k-budget" and "reused_from" not in cap and cap["think_tokens"] <= round(0.1 * 256)
    pairs = list(zip(cap["predictions"], dense["predictions"]))
    assert cap["agreement"] == sum(p == q for p, q in pairs) / 4
    with pytest.raises(ValueError, match="unknown budget axis 'depth'"):
        E.axis_budget(0.5, "depth")
    with pytest.raises(ValueError, match="unknown budget schedule"):
        E.axis_budget(0.5, "all:nope")
    assert E.axis_budget(0.5, "all:think-first").axes == (0.5 / 0.7, 1.0, 0.5)


def test_l2a_lines_resume_only_for_the_gates_that_wrote_them(gm, files, tmp_path):
    import torch

    from l2a.gates import GateConfig, GatePolicy

    torch.manual_seed(0)
    gm.policy = GatePolicy(GateConfig(n_layers=4, n_groups=gm.n_groups, hidden=gm.hf.config.hidden_size, width=16))
    out = tmp_path / "r.jsonl"
    (line,) = run(gm, files, out, methods=["l2a"], budgets=[0.5])
    assert len(line["gates_digest"]) == 16
    (again,) = run(gm, files, out, methods=["l2a"], budgets=[0.5])  # same gates: reused
    assert again == line
    with torch.no_grad():
        gm.policy.think_mu.bias.add_(1.0)  # other gates, same shape
    with pytest.raises(ValueError, match="written with other gates"):
        run(gm, files, out, methods=["l2a"], budgets=[0.5])
    # a line without a digest (older files) is not trusted either; a copy of the dense line needs none
    import json

    legacy = {k: v for k, v in line.items() if k != "gates_digest"}
    out.write_text(json.dumps(legacy) + "\n")
    with pytest.raises(ValueError, match="unrecorded gates"):
        run(gm, files, out, methods=["l2a"], budgets=[0.5])
    out.unlink()
    first = run(gm, files, out, methods=["dense", "l2a"], budgets=[1.0])
    assert [r.get("reused_from") for r in first] == [None, "dense"]
    assert run(gm, files, out, methods=["dense", "l2a"], budgets=[1.0]) == first


def test_lines_of_an_older_metric_version_are_scored_again(gm, files, tmp_path, capsys):
    from l2a.pareto import report

    kw = dict(data_files=[str(files[1])], methods=["dense", "even-spaced"], budgets=[1.0, 0.5], limit=3, batch_size=2,
              seeds=1, out=tmp_path / "r.jsonl", progress=False)
    first = E.evaluate(gm, "gsm8k-loglik", **kw)
    assert [r["metric_version"] for r in first if "reused_from" not in r] == [2, 2]  # whitespace tokens unscored
    old = [dict({k: v for k, v in r.items() if k != "metric_version"}, accuracy=-1.0) for r in first]  # version 1
    kw["out"].write_text("".join(json.dumps(r) + "\n" for r in old))
    again = E.evaluate(gm, "gsm8k-loglik", **kw)
    assert "3 line(s) of gsm8k-loglik were scored by metric version 1 (now 2); scoring them again" in capsys.readouterr().err
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in first]
    lines = read_results(kw["out"])  # the new lines supersede the old ones, in the report too
    assert len(lines) == 3 and all(r["accuracy"] >= 0 for r in lines)
    assert "-100.0" not in open(report(kw["out"], out_dir=tmp_path / "rep")["markdown"]).read()
    assert E.evaluate(gm, "gsm8k-loglik", **kw) == again  # current lines are reused


def test_interleaved_timing_rewrites_only_the_timing(gm, files, tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    res = run(gm, files, out)
    calls = []
    import l2a.retime as R

    monkeypatch.setattr(R, "_time_once", lambda *a, **k: (calls.append(a[3]) or 0.3 + 0.1 * len(calls), 7))
    timed = run(gm, files, out, timing_repeats=3, timing_items=2)
    # the measured points (dense, even-spaced 0.5, block-influence 0.5; the 1.0 lines are dense copies) and only
    # those are timed, 3 rounds each, round-robin: the same point never runs twice in a row
    measured = [r for r in res if "reused_from" not in r]
    assert len(calls) == 3 * len(measured) == 9 and all(a is not b for a, b in zip(calls, calls[1:]))
    for r0, r1 in zip(res, timed):
        assert {k: v for k, v in r0.items() if "second" not in k and k not in ("tokens_per_s", "timing")} == \
            {k: v for k, v in r1.items() if "second" not in k and k not in ("tokens_per_s", "timing")}
        assert r1["timing"]["method"] == "interleaved" and r1["timing"]["repeats"] == 3 and r1["timing"]["items"] == 2
        assert r1["seconds_per_item_single"] == r0["seconds_per_item"] or "reused_from" in r1
    measured_timed = [r for r in timed if "reused_from" not in r]
    adjusted = R.round_adjusted([r["timing"]["seconds"] for r in measured_timed])
    assert [r["seconds_per_item"] for r in measured_timed] == pytest.approx([t / 2 for t in adjusted])  # per item
    by = {(r["method"], r["budget"]): r for r in timed}
    assert by[("even-spaced", 1.0)]["timing"] == by[("dense", 1.0)]["timing"]  # a copy of dense takes its timing
    assert read_results(out) == timed  # the file holds the rewritten lines, nothing else
    # a second run with the same settings neither scores nor times again
    monkeypatch.setattr(E, "_run_point", lambda *a, **k: pytest.fail("a finished point ran again"))
    monkeypatch.setattr(R, "_time_once", lambda *a, **k: pytest.fail("timed again"))
    assert run(gm, files, out, timing_repeats=3, timing_items=2) == timed
    # --retime: the finished points are timed again (not scored again), the single-pass timing kept
    calls.clear()
    monkeypatch.setattr(R, "_time_once", lambda *a, **k: (calls.append(a[3]) or 0.9, 7))
    again = run(gm, files, out, timing_repeats=3, timing_items=2, retime=True)
    assert len(calls) == 9 and all(r["seconds_per_item"] == pytest.approx(0.45) for r in again)
    assert [r["seconds_per_item_single"] for r in again] == [r["seconds_per_item_single"] for r in timed]


def test_interleaved_timing_runs_each_batch_under_every_point_before_the_next(gm, files, monkeypatch):
    """The timing unit is a batch: each batch runs under every point (rotated order) before the next batch, a
    round's seconds are the sum of its batches, and a real pass counts the tokens task.run processes."""
    import l2a.retime as R
    from l2a.baselines import make_method
    from l2a.budget import Budget
    from l2a.tasks import get_task

    mc, _ = files
    task = get_task("mc")
    rows, _ = task.load(str(mc))
    points = [(make_method("dense"), Budget.parse(1.0)), (make_method("even-spaced"), Budget.parse(0.5)),
              (make_method("drop-last"), Budget.parse(0.5))]
    real = R.retime(gm, task, rows, points, repeats=1, items=5, batch_size=2, progress=False)
    assert all(f["timing"]["unit"] == "batch" and f["timing"]["items"] == 5 and len(f["timing"]["seconds"]) == 1
               for f in real)
    calls = []

    def fake(model, task_, chunk, decide, batch_size, max_new_tokens):
        calls.append((decide, tuple(r["question"] for r in chunk)))
        return 0.1 * len(calls), 10 * len(chunk)

    monkeypatch.setattr(R, "_time_once", fake)
    timed = R.retime(gm, task, rows, points, repeats=2, items=5, batch_size=2, progress=False)
    chunks = [tuple(r["question"] for r in rows[:5][i:i + 2]) for i in range(0, 5, 2)]  # 2 + 2 + 1 items
    assert [c for _, c in calls] == [c for _ in range(2) for c in chunks for _ in range(3)]  # batch by batch
    deciders = [d for d, _ in calls]
    for k in range(0, len(calls), 3):
        assert len(set(map(id, deciders[k:k + 3]))) == 3  # every point once per batch
    assert deciders[0] is not deciders[3]  # the order rotates from batch to batch
    point = {id(d): j for j, d in enumerate(deciders[:3])}  # the first batch of the first round: points in order
    per = [[0.0, 0.0] for _ in points]  # seconds per (point, round)
    for n_call, d in enumerate(deciders, 1):
        per[point[id(d)]][(n_call - 1) // 9] += 0.1 * n_call
    assert [f["timing"]["seconds"] for f in timed] == [[round(x, 4) for x in p] for p in per]  # a round: its batches
    adjusted = R.round_adjusted(per)
    assert [f["seconds_per_item"] for f in timed] == pytest.approx([t / 5 for t in adjusted])
    assert [f["tokens_per_s"] for f in timed] == pytest.approx([50 / t for t in adjusted])


def test_round_adjusted_times_divide_out_each_rounds_common_speed():
    """A round slower for every point changes nothing; two points' ratio is the median of their per-round
    ratios (the plain medians would say 1.83 here, not 2); one point or one round: the plain median."""
    from l2a.retime import round_adjusted

    a, b = [1.0, 3.0, 1.2], [2.2, 6.0, 2.0]  # per round; b/a = 2.2, 2.0, 1.67
    ta, tb = round_adjusted([a, b])
    assert tb / ta == pytest.approx(2.0)
    slow = round_adjusted([[a[0], 5 * a[1], a[2]], [b[0], 5 * b[1], b[2]]])  # the slowest round 5x slower for both
    assert slow == pytest.approx([ta, tb])
    fast = round_adjusted([[a[0] / 3, a[1], a[2]], [b[0] / 3, b[1], b[2]]])  # round 0 3x faster for both: same ratio
    assert fast[1] / fast[0] == pytest.approx(2.0)
    assert min(a) < ta < max(a) and min(b) < tb < max(b)  # on the points' own scale
    assert round_adjusted([a]) == [1.2] and round_adjusted([[1.0], [3.0]]) == [1.0, 3.0]


def test_calibration_with_mc_pairs_and_resume_under_another_calibration(gm, files, tmp_path, monkeypatch):
    """Calibration.mc adds the MC files' (question, correct choice) pairs to the calibrated baselines' text;
    a file's calibrated lines resume only under the calibration that wrote them (a missing file fails first)."""
    from l2a import static, swap
    from l2a.mix import ordered

    mc, math = files
    plain = Calibration(path=str(math), n=4, max_tokens=40)
    mixed = Calibration(path=str(math), n=4, max_tokens=40, mc=[str(mc)])  # a list, as JSON reads back
    assert mixed.mc == (str(mc),) and hash(mixed) != hash(plain)
    seen = []
    real = swap.greedy_kl_order
    monkeypatch.setattr(swap, "greedy_kl_order", lambda m, prs, *a, **k: seen.append(prs) or real(m, prs, *a, **k))
    static.greedy_order_for(gm, plain)
    static.greedy_order_for(gm, mixed)
    assert len(seen) == 2 and seen[1][:4] == seen[0] and seen[1][4:] == ordered(gm.tokenizer, 0, [str(mc)])[:4]
    more = Calibration(path=str(math), n=4, max_tokens=40, mc=[str(mc)], mc_search=6)  # more MC pairs searched
    with pytest.raises(ValueError, match="mc_search must be a positive int"):
        Calibration(mc=[str(mc)], mc_search=0)
    static.greedy_order_for(gm, more)
    assert len(seen) == 3 and seen[2][:4] == seen[0] and seen[2][4:] == ordered(gm.tokenizer, 0, [str(mc)])[:6]
    fewer = Calibration(path=str(math), n=4, max_tokens=40, mc=[str(mc)], search=2)  # fewer GSM8K items searched
    with pytest.raises(ValueError, match="search must be a positive int"):
        Calibration(search=0)
    static.greedy_order_for(gm, fewer)  # as many MC pairs as GSM8K items unless mc_search says otherwise
    assert len(seen) == 4 and seen[3] == seen[0][:2] + ordered(gm.tokenizer, 0, [str(mc)])[:2]
    assert static.stats_for(gm, mixed).tokens > static.stats_for(gm, plain).tokens
    out = tmp_path / "r.jsonl"
    lines = run(gm, files, out, methods=["dense", "greedy-kl", "even-spaced"], budgets=[0.5], calibration=mixed)
    assert Calibration(**lines[1]["config"]["calibration"]) == mixed
    real_point = E._run_point
    monkeypatch.setattr(E, "_run_point", lambda *a, **k: pytest.fail("a finished point ran again"))
    again = run(gm, files, out, methods=["dense", "greedy-kl", "even-spaced"], budgets=[0.5], calibration=mixed)
    assert again == json.loads(json.dumps(lines))  # read back under the same calibration
    monkeypatch.setattr(E, "_run_point", real_point)
    run(gm, files, out, methods=["dense", "even-spaced"], budgets=[0.5])  # uncalibrated lines do not care
    with pytest.raises(ValueError, match="was calibrated on"):
        run(gm, files, out, methods=["greedy-kl"], budgets=[0.5])
    with pytest.raises(ValueError, match="was calibrated on"):
        run(gm, files, out, methods=["greedy-kl"], budgets=[0.5], calibration=more)
    with pytest.raises(FileNotFoundError):
        run(gm, files, tmp_path / "other.jsonl", calibration=Calibration(path=str(math), mc=[str(tmp_path / "none.jsonl")]))
    assert not (tmp_path / "other.jsonl").exists()


def test_retime_results_times_the_lines_of_several_files_together(gm, files, tmp_path):
    """Lines of one data file in two results files (another calibration, learned gates) are timed in one
    interleaved run, each under its own calibration and gates; a point in both files is timed once; nothing
    but the timing fields changes; gates other than the line's are refused."""
    import torch

    from l2a.gates import GateConfig, GatePolicy
    from l2a.retime import retime_results
    from l2a.tasks import get_task

    mc, math = files
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run(gm, files, a, methods=["dense", "block-influence"], seeds=1)
    torch.manual_seed(0)
    gates = GatePolicy(GateConfig(n_layers=4, n_groups=gm.n_groups, hidden=gm.hf.config.hidden_size, width=16))
    gm.policy = gates
    mixed = Calibration(path=str(math), n=4, max_tokens=40, mc=[str(mc)])
    run(gm, files, b, methods=["dense", "block-influence", "l2a"], seeds=1, calibration=mixed)
    gm.policy = None  # the l2a lines must be timed with the gates given for their file
    before = {p: read_results(p) for p in (a, b)}
    timed = retime_results(gm, get_task("mc"), str(mc), [(a, None), (b, gates)], repeats=2, items=2, batch_size=2,
                           progress=False)
    # dense (in both files: once), block-influence under each calibration, l2a
    assert len(timed) == 4 and sum(k.startswith("block-influence") for k in timed) == 2
    assert gm.policy is None
    timing = ("seconds_per_item", "tokens_per_s", "timing", "seconds_per_item_single")
    after = {p: read_results(p) for p in (a, b)}
    for p in (a, b):
        assert [{k: v for k, v in r.items() if k not in timing} for r in after[p]] == \
            [{k: v for k, v in r.items() if k not in timing} for r in before[p]]
        assert all(r["timing"]["method"] == "interleaved" and r["timing"]["items"] == 2 for r in after[p])
        assert all(r["seconds_per_item_single"] == q["seconds_per_item"] for r, q in zip(after[p], before[p]))
        dense = next(r for r in after[p] if r["method"] == "dense")
        assert all(r["timing"] == dense["timing"] for r in after[p] if "reused_from" in r)
    assert next(r for r in after[a] if r["method"] == "dense")["timing"] == \
        next(r for r in after[b] if r["method"] == "dense")["timing"]
    import copy

    other = copy.deepcopy(gates)
    with torch.no_grad():
        other.think_mu.bias.add_(1.0)  # other gates, same shape
    for wrong in (None, other):
        with pytest.raises(ValueError, match="was written by gates"):
            retime_results(gm, get_task("mc"), str(mc), [(b, wrong)], repeats=1, items=1, progress=False)
    with pytest.raises(ValueError, match="no measured lines"):
        retime_results(gm, get_task("mc"), str(math), [(a, None)], repeats=1, items=1, progress=False)
