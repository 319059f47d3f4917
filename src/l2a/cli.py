"""cli: the `l2a` command. Thin and lazy (DESIGN §6 rule 11).

Each subcommand parses its flags and calls the Python function behind it, imported inside the handler,
so `l2a --help` never imports torch. User errors (a ValueError from the library, a missing model or
file) print `l2a: error: <message>` and exit 2 without a traceback. Every command ends its stdout with
one JSON record (`record.run_record`), appended to `--out` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

def _env_defaults():
    # Before torch is imported: spin-waiting OpenMP collapses 2-thread torch on shared cores (DESIGN §3).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget must be a number in (0, 1], got {text!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"budget must be in (0, 1], got {text}")
    return v


def _fractions(text: str) -> tuple[float, ...]:
    return tuple(_fraction(t) for t in text.split(",") if t.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}") from None
    if not out or any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    return out


def _axes(text: str) -> tuple[str, ...]:
    from .budget import SCHEDULES
    from .evaluate import AXES

    axes = tuple(a.strip() for a in text.split(",") if a.strip())
    valid = (*AXES, *(f"all:{s}" for s in SCHEDULES))
    bad = [a for a in axes if a not in valid]
    if not axes or bad:
        raise argparse.ArgumentTypeError(f"unknown axes {bad or text!r}; valid: {', '.join(valid)}")
    return axes


def _int_at_least(low: int, what: str):
    """An argparse type: an int >= `low`, else a clear error naming `what` was expected."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = low - 1
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


_positive = _int_at_least(1, "a positive int")
_non_negative = _int_at_least(0, "an int >= 0")


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
    return load(args.model, dtype=args.dtype, gates=gates)


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
                          train_text=args.train_text, mix_mc=args.mix_mc or [], cost=args.cost, row_tol=args.row_tol,
                          depth_pairs=args.depth_pairs,
                          depth_max_len=args.depth_max_len,
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
    gm = _load(args)
    lines = evaluate(gm, args.task, args.data or [None], args.budgets, args.methods.split(","), limit=args.limit,
                     batch_size=args.batch_size, seeds=args.seeds, out=args.results,
                     max_new_tokens=args.max_new_tokens, model_name=args.model, axes=args.axes,
                     tuned_gates=args.tuned_gates, timing_repeats=args.timing_repeats, timing_items=args.timing_items,
                     retime=args.retime, calibration=calibration)
    keys = ("method", "data", "budget", "n", "accuracy", "ci_low", "ci_high", "realized_layers", "seconds_per_item")
    for r in lines:
        print(" ".join(f"{k}={r.get(k)}" for k in keys), file=sys.stderr)
    config = {k: getattr(args, k) for k in ("model", "gates", "task", "data", "budgets", "methods", "limit", "seeds", "dtype",
                                            "calib_search", "calib_mc", "calib_mc_search")}
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


# -- parser --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2a", description="Resource-adaptive LLM inference with budget-conditioned gates.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"l2a {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(s, threads=2):
        s.add_argument("--model", default="smollm2-135m", help="registered name, model directory or .gguf (default: %(default)s)")
        s.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16"),
                       help="auto = bfloat16 where the CPU/GPU runs it natively, else float32 (default: %(default)s)")
        s.add_argument("--threads", type=int, default=threads, help="torch threads (default: %(default)s)")
        s.add_argument("--out", help="append the JSON record to this JSON-lines file")
        s.add_argument("--gates", help="gate artifact directory (default: the shipped gates of a registered model)")
        s.add_argument("--no-gates", action="store_true", help="load no gates (budgets fall back to static skipping)")

    b = sub.add_parser("bench", help="measure gated vs plain vs pruned decode speed and KV memory")
    common(b)
    b.add_argument("--prompt-len", type=_positive, default=64)
    b.add_argument("--new-tokens", type=_positive, default=32)
    b.add_argument("--batch-sizes", type=_ints, default=(1, 8), help="comma-separated (default: 1,8)")
    b.add_argument("--fractions", type=_fractions, default=(0.75, 0.5), help="layer fractions, even-spaced (default: 0.75,0.5)")
    b.add_argument("--decisions", help="JSON file: a list of GateDecision dicts (replaces --fractions)")
    b.add_argument("--repeats", type=_positive, default=3)
    b.add_argument("--warmup", type=int, default=1)
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="answer one GSM8K question at several budgets, then a short bench")
    common(d)
    d.add_argument("--budgets", type=_fractions, default=(1.0, 0.75, 0.5), help="comma-separated (default: 1.0,0.75,0.5)")
    d.add_argument("--max-new-tokens", type=_positive, default=80)
    d.add_argument("--bench", action=argparse.BooleanOptionalAction, default=True, help="run the short bench after")
    d.add_argument("--data", help="GSM8K JSON-lines file (default: $L2A_DATA, else ../shared/data/gsm8k/test.jsonl, else built-in)")
    d.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True, help="run the short Pareto sweep")
    d.add_argument("--sweep-limit", type=_positive, default=100, help="GSM8K items in the sweep (default: %(default)s)")
    d.add_argument("--sweep-budgets", type=_fractions, default=(1.0, 0.85, 0.7), help="(default: 1.0,0.85,0.7)")
    d.add_argument("--sweep-out", default="runs/demo/results.jsonl", help="sweep results (default: %(default)s)")
    d.set_defaults(func=cmd_demo, dtype="auto")

    t = sub.add_parser("train", help="train budget-conditioned gates on a frozen base model (L2A objective)")
    common(t, threads=None)
    t.set_defaults(dtype="auto")
    t.add_argument("--gates-out", default="runs/gates", help="artifact and training-state directory (resumes)")
    t.add_argument("--data", help="GSM8K-style train JSON lines (default: shared data, hub, else generated)")
    t.add_argument("--steps", type=_positive, default=300)
    t.add_argument("--examples", type=_positive, default=4, help="examples per step, each at two budgets")
    t.add_argument("--max-len", type=_positive, default=176)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=_positive, help="use only the first N training examples")
    t.add_argument("--ablation", action="store_true", help="budget-only ablation: router input zeroed")
    t.add_argument("--track", type=float, default=0.0, help="weight of the two-sided (E[cost]-b)^2 term (default 0)")
    t.add_argument("--warm-start", choices=("block-influence", "greedy-kl"),
                   help="initial layer ranking: a static score, or greedy removal under KL to dense (~10 min)")
    t.add_argument("--dual", choices=("violations", "signed"), default="violations",
                   help="cost multiplier update: only over-budget rows (never decreases) or the signed mean")
    t.add_argument("--noise-end", type=_fraction, default=1.0, help="gate noise scale at the end (annealed from 1)")
    t.add_argument("--estimator", choices=("st", "score"), default="st",
                   help="gradient of the task terms: straight-through, or score function over sampled gate sets")
    t.add_argument("--samples", type=_positive, default=4, help="gate sets sampled per row (--estimator score)")
    t.add_argument("--sampler", choices=("bernoulli", "topk"), default="bernoulli",
                   help="--estimator score: layer gates drawn independently, or exactly the layer count inference "
                        "keeps at the row's budget, by keep-logit without replacement (the sets exact mode runs)")
    t.add_argument("--cost", choices=("request", "batch"), default="request",
                   help="cost hinge per request, or on the batch's mean spend (prompts may trade layers: per-prompt depth)")
    t.add_argument("--row-tol", type=_fraction, default=0.1,
                   help="--cost batch: how far one request may spend above its budget (default: %(default)s)")
    t.add_argument("--depth-pairs", type=int, default=0,
                   help="fit a depth head (per-prompt layer count) on this many held-out train chains after training")
    t.add_argument("--depth-max-len", type=_positive, default=320,
                   help="the depth head's chains' length, prompt included (default: %(default)s)")
    t.add_argument("--dense-at-full", action="store_true", help="rows at budget 1.0 run dense in training, as at inference")
    t.add_argument("--warm-scale", type=float, default=1.5, help="weight of the warm-start ranking in the logit bias")
    t.add_argument("--warm-pairs", type=_positive, default=16, metavar="N",
                   help="--warm-start greedy-kl: search on N held-out task examples (default: %(default)s; "
                        "`l2a eval --calib-search N` gives the greedy-kl baseline as many)")
    t.add_argument("--warm-text", type=int, default=0, metavar="N",
                   help="--warm-start greedy-kl: also search on N second-source examples (generic prose, or --mix-mc)")
    t.add_argument("--warm-domains", action="store_true",
                   help="--warm-start greedy-kl: search the task's and the --warm-text examples apart and start each "
                        "training prompt from its own source's order (input-aware warm start; needs --train-text)")
    t.add_argument("--warm-refine", type=_fraction, nargs="+", default=[], metavar="B",
                   help="--warm-start greedy-kl: refine the order's set at layer budget B (a block start, then "
                        "single-layer swaps under the same KL) and start from an order nested around it (greedy's "
                        "path misses better deep sets); several budgets: deepest first, each searched inside the last")
    t.add_argument("--anchor", type=float, default=0.0, metavar="W",
                   help="with --warm-start: weight of a trust region holding each prompt's layer ranking near the "
                        "warm start's (z-scored logits; shifts with the budget are free). 0 = none (default)")
    t.add_argument("--train-text", type=float, default=0.0, metavar="F",
                   help="share of each step's examples drawn from the second source (generic prose: stdlib docstrings, "
                        "or --mix-mc) instead of the task's, for gates that route out-of-domain prompts too (default: %(default)s)")
    t.add_argument("--mix-mc", nargs="+", metavar="FILE",
                   help="the second source: these multiple-choice files' (question, correct choice) pairs instead of "
                        "prose (e.g. ../shared/data/mc/siqa.jsonl; evaluate on other sets)")
    t.add_argument("--select", choices=("last", "val-kl", "val-exact"), default="last",
                   help="artifact = last step, or the checkpoint with the lowest held-out KL of its layer sets: "
                        "top-k by keep-logit (val-kl) or the exact-mode sets l2a-exact evaluates (val-exact)")
    t.add_argument("--val-budgets", nargs="+", type=_fraction, metavar="B",
                   help="the layer budgets --select checks average (default: 0.6 0.7 0.8)")
    t.add_argument("--fixed-budget", type=_fraction, help="train the tuned-static baseline: budget-only gates at this "
                                                          "one layer budget (write to DIR/b0.70 for `--tuned-gates DIR`)")
    t.add_argument("--config", help="train with this TrainConfig JSON or a gate artifact's l2a_config.json "
                                    "(reproduces it; other flags but --gates-out are ignored)")
    t.set_defaults(func=cmd_train)

    k = sub.add_parser("train-think", help="fit the gates' think allowance by truncation probing (reasoning axis)")
    common(k, threads=None)
    k.set_defaults(dtype="auto")
    k.add_argument("--gates-out", default="runs/think", help="probes.jsonl (resumes) and the updated artifact")
    k.add_argument("--data", help="GSM8K-style train JSON lines (default: shared data, hub, else generated)")
    k.add_argument("--problems", type=_positive, default=256, help="training problems probed (default: 256)")
    k.add_argument("--max-new-tokens", type=_positive, default=256, help="dense chain-of-thought cap")
    k.add_argument("--batch-size", type=_positive, default=16)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--prompt", default="steps", help="instruction of the probed chains, the style the allowance "
                   "will run with: steps | concise (default: %(default)s)")
    k.set_defaults(func=cmd_train_think)

    e = sub.add_parser("eval", help="accuracy x realized compute x measured latency, per method and budget")
    common(e)
    e.add_argument("--task", required=True, help="gsm8k | gsm8k-budget | gsm8k-concise | gsm8k-loglik | mc")
    e.add_argument("--data", action="append", help="data file (repeatable; default: the task's default set)")
    e.add_argument("--budgets", type=_fractions, default=(1.0, 0.85, 0.7, 0.55))
    e.add_argument("--methods", default="dense,l2a,block-influence,angular,even-spaced")
    e.add_argument("--limit", type=_positive)
    e.add_argument("--seeds", type=_positive, default=3)
    e.add_argument("--batch-size", type=_positive, default=8)
    e.add_argument("--max-new-tokens", type=_positive, default=256)
    e.add_argument("--results", help="results JSON lines (appended; finished points are skipped)")
    e.add_argument("--calib-search", type=_positive, metavar="N",
                   help="greedy-kl: search on the first N GSM8K calibration items (default 16; `l2a train "
                        "--warm-pairs N` gives the gates' warm start as many)")
    e.add_argument("--calib-mc", nargs="+", metavar="FILE",
                   help="add these multiple-choice files' (question, correct choice) pairs to the static baselines' "
                        "calibration text (the data `l2a train --mix-mc` trains gates on; use its own --results file)")
    e.add_argument("--calib-mc-search", type=_positive, metavar="N",
                   help="greedy-kl: search on the first N of those pairs (default: as many as the GSM8K items; "
                        "`l2a train --warm-text N` gives the gates' warm start as many)")
    e.add_argument("--tuned-gates", help="tuned-static: directory of per-budget gates (DIR/b0.70/, ...)")
    e.add_argument("--axes", type=_axes, default=("all",),
                   help="budget axes swept, comma-separated: all (the scalar schedule; all:NAME for a named one), "
                        "layers, heads, think (that axis alone) (default: all)")
    e.add_argument("--timing-repeats", type=_non_negative, default=0,
                   help="then time each data file's points again together, round-robin, this many rounds (median), "
                        "on their first --timing-items items; the lines are rewritten with those timings (default 0: off)")
    e.add_argument("--timing-items", type=_positive, default=100)
    e.add_argument("--retime", action="store_true",
                   help="time the points again even when they were timed with these settings (after a runtime change)")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("report", help="markdown table and Pareto plots from `l2a eval` results")
    r.add_argument("results")
    r.add_argument("--out-dir")
    r.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True)
    r.add_argument("--out", help="append the JSON record to this JSON-lines file")
    r.set_defaults(func=cmd_report)

    c = sub.add_parser("check-gates", help="budget tracking, nesting, input-awareness and KL of trained gates")
    common(c)
    c.add_argument("--ablation", help="gate artifact of the budget-only ablation to compare against")
    c.add_argument("--data", help="GSM8K-style test JSON lines (default: shared data, hub, else generated)")
    c.add_argument("--limit", type=_positive, default=200)
    c.add_argument("--kl-limit", type=_positive, default=100)
    c.add_argument("--static", action=argparse.BooleanOptionalAction, default=True,
                   help="KL of the static baselines and of strict mode (--no-static: the ablation comparison alone, "
                   "a third of the passes, for many chains)")
    c.add_argument("--headroom", action="store_true",
                   help="also measure what per-prompt choice could gain near the warm-start set (an oracle bound, ~3 min)")
    c.set_defaults(func=cmd_check_gates)

    a = sub.add_parser("calibrate", help="refit trained gates' budget calibration (tracking) on held-out prompts")
    common(a)
    a.set_defaults(dtype="auto")
    a.add_argument("--prompts", type=_positive, help="held-out prompts (default: the training run's calib_prompts)")
    a.set_defaults(func=cmd_calibrate)

    f = sub.add_parser("fit-depth", help="add a depth head (per-prompt layer count) to trained gates (depth.py)")
    common(f)
    f.set_defaults(dtype="auto")
    f.add_argument("--gates-out", help="where to write the gates with the head")
    f.add_argument("--pairs", type=_positive, default=320, help="unseen train chains to fit on (default: %(default)s)")
    f.add_argument("--max-len", type=_positive, default=320, help="their length, prompt included (default: %(default)s)")
    f.set_defaults(func=cmd_fit_depth)

    g = sub.add_parser(
        "generate", help="one-off generation at a budget",
        description="One-off generation at a scalar budget: the loaded gates choose layers, KV-head groups and the "
        "think allowance (even-spaced layers and no cap when no gates are loaded).",
    )
    common(g, threads=None)
    g.add_argument("--prompt", required=True)
    g.add_argument("--budget", type=_fraction, default=1.0, help="scalar budget in (0, 1] (default: 1.0)")
    g.add_argument("--thinking-token-budget", type=int, help="explicit think allowance (tokens): wins over the learned one")
    g.add_argument("--max-new-tokens", type=_positive, default=64)
    g.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True, help="apply the chat template")
    g.set_defaults(func=cmd_generate)
    return p


def _resolve_auto_dtype(args) -> None:
    """`--dtype auto` becomes the dtype it means here before anything runs, so records name what ran."""
    if getattr(args, "dtype", None) == "auto":
        from .loading import auto_dtype

        args.dtype = auto_dtype()
        if args.dtype != "bfloat16":
            print("l2a: --dtype auto: float32 (this CPU has no native bfloat16; emulated it measured 2x to 80x slower)",
                  file=sys.stderr)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    _env_defaults()
    try:
        _resolve_auto_dtype(args)
        return args.func(args)
    except KeyboardInterrupt:
        print("l2a: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user errors only; anything else keeps its traceback
        if isinstance(e, (ValueError, FileNotFoundError)) or type(e).__name__ == "ModelNotInstalledError":
            print(f"l2a: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
