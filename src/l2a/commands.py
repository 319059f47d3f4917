"""commands: the handlers behind each `l2a` subcommand (cli.py parses the flags and calls one).

Each handler imports the library function it calls inside itself, so parsing (`l2a --help`) never imports
torch, and ends by printing one JSON record (`record.run_record`), appended to `--out` when given.
Not here: the flags (cli.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _emit(record: dict, out) -> None:
    from .record import write_record

    if out:
        write_record(out, record)
    print(json.dumps(record, ensure_ascii=False), flush=True)


# -- bench ---------------------------------------------------------------------------------------------------


def cmd_bench(args) -> int:
    from .bench import bench, format_table, load_decisions

    decisions = load_decisions(args.decisions) if args.decisions else None
    record = bench(
        model_spec=args.model, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
        batch_sizes=args.batch_sizes, fractions=args.fractions, repeats=args.repeats, warmup=args.warmup,
        dtype=args.dtype, threads=args.threads, decisions=decisions,
    )
    print(format_table(record))
    _emit(record, args.out)
    return 0


def _calibration(args):
    """The static baselines' Calibration from `l2a eval`'s --calib-search / --calib-mc / --calib-mc-search."""
    from .static import Calibration

    if args.calib_mc_search and not args.calib_mc:
        raise ValueError("--calib-mc-search N sets how many --calib-mc pairs greedy-kl searches: pass --calib-mc FILE too")
    return Calibration(mc=tuple(args.calib_mc or ()), search=args.calib_search, mc_search=args.calib_mc_search)


def _load(args):
    import torch

    from .loading import load

    if args.threads:
        torch.set_num_threads(args.threads)
    gates = False if getattr(args, "no_gates", False) else getattr(args, "gates", None)
    return load(args.model, dtype=args.dtype, gates=gates, bridges=getattr(args, "bridges", None))


# -- generate and demo (demo.py) -------------------------------------------------------------------------


def cmd_generate(args) -> int:
    from .demo import generate

    return generate(args)


def cmd_demo(args) -> int:
    from .demo import demo

    return demo(args)


# -- train, eval, report, check-gates ---------------------------------------------------------------------------


def cmd_train(args) -> int:
    import torch

    from .record import run_record
    from .train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.config:
        # Reproduce a run: a TrainConfig JSON, or a gate artifact's l2a_config.json (its training config).
        saved = json.loads(Path(args.config).read_text())
        saved = saved.get("training", {}).get("config", saved)
        try:
            cfg = TrainConfig(**{**saved, "out": args.gates_out})
        except TypeError as e:
            raise ValueError(f"{args.config}: not a TrainConfig ({e})") from None
    else:
        cfg = TrainConfig(model=args.model, data=args.data, out=args.gates_out, steps=args.steps,
                          examples=args.examples, max_len=args.max_len, lr=args.lr, seed=args.seed, dtype=args.dtype,
                          ablation=args.ablation, limit=args.limit, track=args.track, warm_start=args.warm_start,
                          fixed_budget=args.fixed_budget, dual=args.dual, noise_end=args.noise_end, select=args.select,
                          **({"val_budgets": args.val_budgets} if args.val_budgets else {}),
                          estimator=args.estimator, samples=args.samples, sampler=args.sampler, dense_at_full=args.dense_at_full,
                          warm_scale=args.warm_scale, warm_pairs=args.warm_pairs, warm_text=args.warm_text,
                          warm_domains=args.warm_domains, warm_refine=args.warm_refine, anchor=args.anchor,
                          train_text=args.train_text, mix_mc=args.mix_mc or [], calib_mix=args.calib_mix,
                          cost=args.cost, row_tol=args.row_tol, depth_pairs=args.depth_pairs,
                          depth_max_len=args.depth_max_len, bridges=args.bridges,
                          **({"calib_prompts": 0} if args.fixed_budget else {}))
    summary = train(cfg)
    print(f"gates written to {cfg.out} ({summary['gate_params']} parameters, {summary['seconds']} s)", file=sys.stderr)
    _emit(run_record("train", summary["config"], summary), args.out)
    return 0


def cmd_train_think(args) -> int:
    import torch

    from .record import run_record
    from .think import ThinkConfig, train_think

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ThinkConfig(model=args.model, gates=args.gates, out=args.gates_out, data=args.data, problems=args.problems,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                      dtype=args.dtype, prompt=args.prompt)
    summary = train_think(cfg)
    print(f"gates with a fitted think head written to {cfg.out}: held-out NLL {summary['nll_test']:.3f} "
          f"(input-blind {summary['nll_test_input_blind']:.3f}), coverage {summary['coverage']}", file=sys.stderr)
    _emit(run_record("train-think", summary["config"], summary), args.out)
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate
    from .record import run_record

    if not args.results:
        raise ValueError("l2a eval needs --results FILE (one JSON line per point; rerun to resume)")
    calibration = _calibration(args)
    gm = _load(args)  # with --bridges, evaluate() names the lines METHOD+bridges
    lines = evaluate(gm, args.task, args.data or [None], args.budgets, args.methods.split(","), limit=args.limit,
                     batch_size=args.batch_size, seeds=args.seeds, out=args.results,
                     max_new_tokens=args.max_new_tokens, model_name=args.model, axes=args.axes,
                     tuned_gates=args.tuned_gates, timing_repeats=args.timing_repeats, timing_items=args.timing_items,
                     retime=args.retime, calibration=calibration)
    keys = ("method", "data", "budget", "n", "accuracy", "ci_low", "ci_high", "realized_layers", "seconds_per_item")
    for r in lines:
        print(" ".join(f"{k}={r.get(k)}" for k in keys), file=sys.stderr)
    config = {k: getattr(args, k) for k in ("model", "gates", "task", "data", "budgets", "methods", "limit", "seeds", "dtype",
                                            "calib_search", "calib_mc", "calib_mc_search", "bridges")}
    _emit(run_record("eval", config, {"results": args.results, "points": len(lines)}), args.out)
    return 0


def cmd_report(args) -> int:
    from .pareto import report
    from .record import run_record

    rep = report(args.results, args.out_dir, plots=args.plots)
    print(Path(rep["markdown"]).read_text())
    sparsity = {f"{t}:{d}": v for (t, d), v in rep["sparsity"].items()}
    sure = {f"{t}:{d}": v for (t, d), v in rep["sparsity_confident"].items()}
    _emit(run_record("report", {"results": args.results}, {"markdown": rep["markdown"], "plots": rep["plots"],
                                                           "sparsity_within_1pt": sparsity,
                                                           "sparsity_within_1pt_95ci": sure}), args.out)
    return 0


def cmd_check_gates(args) -> int:
    from .checkpoint import load_gates, read_config
    from .gatecheck import check_gates, render
    from .record import run_record

    if not args.static and not args.ablation:
        raise ValueError("--no-static leaves only the ablation comparison: give --ablation DIR")
    gm = _load(args)
    ablation = load_gates(args.ablation, gm.hf) if args.ablation else None
    warm = (read_config(gm.gates_path).get("training") or {}).get("warm_start_order") if gm.gates_path else None
    res = check_gates(gm, data=args.data, limit=args.limit, kl_limit=args.kl_limit, ablation=ablation, warm_order=warm,
                      headroom=args.headroom, static=args.static)
    print(render(res))
    config = {k: getattr(args, k) for k in ("model", "gates", "ablation", "data", "limit", "kl_limit", "dtype", "headroom",
                                            "static")}
    config["gates"] = gm.gates_path
    _emit(run_record("check-gates", config, res), args.out)
    return 0


def cmd_calibrate(args) -> int:
    from .record import run_record
    from .calibration import recalibrate

    if not args.gates:
        raise ValueError("l2a calibrate needs --gates DIR (a gate artifact written by `l2a train`)")
    args.no_gates = True
    gm = _load(args)
    res = recalibrate(gm, args.gates, prompts=args.prompts)
    counts = " + ".join(f"{n} {k}" for k, n in res["prompts"].items())
    print(f"calibration of {args.gates} refit on {counts} held-out prompts ({res['data_source']})", file=sys.stderr)
    _emit(run_record("calibrate", {k: getattr(args, k) for k in ("model", "gates", "prompts", "dtype")}, res), args.out)
    return 0


def cmd_fit_bridges(args) -> int:
    from .bridges import BridgeConfig, fit_bridges, save_bridges
    from .record import run_record
    from .static import Calibration

    args.no_gates = True
    if args.calib_mc_n and not args.calib_mc:
        raise ValueError("--calib-mc-n N sets how many --calib-mc pairs the bridges fit on: pass --calib-mc FILE too")
    config = BridgeConfig(Calibration(mc=tuple(args.calib_mc or ()), n=args.calib_n), ridge=args.ridge, rank=args.rank,
                          mc_pairs=args.calib_mc_n)
    gm = _load(args)
    bridges = fit_bridges(gm, config)
    save_bridges(bridges, args.bridges_out)
    print(f"bridges (rank {bridges.rank}) written to {args.bridges_out}", file=sys.stderr)
    _emit(run_record("fit-bridges", {k: getattr(args, k) for k in ("model", "dtype", "calib_n", "calib_mc", "calib_mc_n", "ridge", "rank")},
                     {"bridges_out": args.bridges_out, **bridges.describe(), "fit": bridges.fit}), args.out)
    return 0


def cmd_tune_bridges(args) -> int:
    from .bridge_tune import TuneConfig, tune_bridges, val_gain
    from .bridges import save_bridges
    from .record import run_record
    from .static import Calibration

    if args.calib_mc_n and not args.calib_mc:
        raise ValueError("--calib-mc-n N sets how many --calib-mc pairs the tuning reads: pass --calib-mc FILE too")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    from .baselines import METHODS

    if bad := [m for m in methods if m not in METHODS or m in ("dense", "tuned-static", "think-cap")]:
        valid = [m for m in METHODS if m not in ("dense", "tuned-static", "think-cap")]
        raise ValueError(f"unknown or unusable --methods {bad}; valid: {', '.join(valid)}")
    args.no_gates = not any(m.startswith("l2a") for m in methods)
    config = TuneConfig(methods, args.budgets, steps=args.steps, batch=args.batch, positions=args.positions, lr=args.lr,
                        calibration=Calibration(mc=tuple(args.calib_mc or ()), n=args.calib_n),
                        mc_pairs=args.calib_mc_n, val=args.val, val_every=args.val_every, seed=args.seed,
                        gates=None if args.no_gates else (args.gates or "shipped"))
    gm = _load(args)
    start = gm.bridges  # --bridges
    tuned = tune_bridges(gm, start, config, out=args.bridges_out)
    save_bridges(tuned, args.bridges_out)
    t = tuned.fit["tune"]
    print(f"bridges tuned (step {t['selected_step']} of {config.steps}): held-out KL {t['ridge_val_kl']['mean']:.4f} "
          f"-> {t['val_kl']['mean']:.4f} ({val_gain(tuned):+.1%}); written to {args.bridges_out}", file=sys.stderr)
    keys = ("model", "dtype", "bridges", "methods", "budgets", "steps", "batch", "positions", "lr", "calib_n", "calib_mc",
            "calib_mc_n", "val", "val_every", "seed", "gates")
    _emit(run_record("tune-bridges", {k: getattr(args, k) for k in keys},
                     {"bridges_out": args.bridges_out, **tuned.describe(), "start": start.digest(),
                      "val_kl": t["val_kl"], "ridge_val_kl": t["ridge_val_kl"], "val_gain": round(val_gain(tuned), 4)}),
          args.out)
    return 0


def cmd_fit_depth(args) -> int:
    from .depth import fit_artifact
    from .record import run_record

    if not args.gates or not args.gates_out:
        raise ValueError("l2a fit-depth needs --gates DIR (a gate artifact written by `l2a train`) and --gates-out DIR")
    args.no_gates = True
    gm = _load(args)
    res = fit_artifact(gm, args.gates, args.gates_out, pairs=args.pairs, max_len=args.max_len)
    got = f"cross-validated KL {res['cv_gain']:+.1%}" if res["alpha"] > 0 else "no head (features did not predict depth)"
    print(f"depth head fit on {res['pairs']} unseen train chains: {got}; written to {args.gates_out}", file=sys.stderr)
    _emit(run_record("fit-depth", {k: getattr(args, k) for k in ("model", "gates", "gates_out", "pairs", "max_len", "dtype")},
                     res), args.out)
    return 0
