"""cli: the `l2a` command. Thin and lazy (DESIGN §6 rule 11).

Each subcommand parses its flags and calls its handler in commands.py, which imports the library function
it calls inside itself, so `l2a --help` never imports torch. User errors (a ValueError from the library, a
missing model or file) print `l2a: error: <message>` and exit 2 without a traceback. Every command ends
its stdout with one JSON record (`record.run_record`), appended to `--out` when given.
Not here: what each command does (commands.py).
"""

from __future__ import annotations

import argparse
import os
import sys

from .commands import (cmd_bench, cmd_calibrate, cmd_check_gates, cmd_demo, cmd_eval, cmd_fit_bridges, cmd_fit_depth, cmd_tune_bridges, cmd_generate,
                       cmd_report, cmd_train, cmd_train_think)


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
    t.add_argument("--calib-mix", action=argparse.BooleanOptionalAction, default=True,
                   help="with --mix-mc: fit the budget calibration on held-out pairs too, in the --train-text share "
                        "(--no-calib-mix: on GSM8K prompts alone, as before 2026-12-07)")
    t.add_argument("--select", choices=("last", "val-kl", "val-exact"), default="last",
                   help="artifact = last step, or the checkpoint with the lowest held-out KL of its layer sets: "
                        "top-k by keep-logit (val-kl) or the exact-mode sets l2a-exact evaluates (val-exact)")
    t.add_argument("--val-budgets", nargs="+", type=_fraction, metavar="B",
                   help="the layer budgets --select checks average (default: 0.6 0.7 0.8)")
    t.add_argument("--bridges", metavar="DIR", help="rows that skip a layer run these bridges (`l2a fit-bridges`) in "
                   "training, as `l2a eval --bridges DIR` runs them (which the trained gates then require)")
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
                   help="then time each data file's points again together, batch by batch (each batch under every "
                        "point in turn), this many rounds (median after each round's common speed is divided out), "
                        "on their first --timing-items items; the lines are rewritten with those timings (default 0: off)")
    e.add_argument("--timing-items", type=_positive, default=100)
    e.add_argument("--retime", action="store_true",
                   help="time the points again even when they were timed with these settings (after a runtime change)")
    e.add_argument("--bridges", metavar="DIR",
                   help="skipped layers run these bridges (`l2a fit-bridges`) instead of nothing; every method but "
                        "dense is named METHOD+bridges and its FLOPs include them")
    e.set_defaults(func=cmd_eval)

    def bridge_text(s, n: int):
        """The text bridges are fit or tuned on (static.calibration_sequences)."""
        s.add_argument("--calib-n", type=_positive, default=n,
                       help="the first N GSM8K train chains and N pairs of each --calib-mc source (default: %(default)s)")
        s.add_argument("--calib-mc", nargs="+", metavar="FILE", help="multiple-choice files whose (question, correct "
                       "choice) pairs join the text (as `l2a eval --calib-mc`)")
        s.add_argument("--calib-mc-n", type=_positive, metavar="N", help="N pairs of the --calib-mc sources in all "
                       "(default: --calib-n)")

    w = sub.add_parser("fit-bridges", help="fit each layer's bridge: the linear map a row that skips it runs (bridges.py)")
    common(w)
    w.add_argument("--bridges-out", required=True, metavar="DIR", help="where to write the bridges")
    bridge_text(w, 64)
    w.add_argument("--ridge", type=float, default=1e-3, help="ridge weight, relative to the mean diagonal (default: %(default)s)")
    w.add_argument("--rank", type=_positive, help="keep each map's best rank-R approximation (default: full rank)")
    w.set_defaults(func=cmd_fit_bridges)

    u = sub.add_parser("tune-bridges", help="tune fitted bridges end to end: KL to dense through the model, under "
                       "the layer sets methods skip (bridge_tune.py)")
    common(u)
    u.add_argument("--bridges", required=True, metavar="DIR", help="the bridges to start from (`l2a fit-bridges`)")
    u.add_argument("--bridges-out", required=True, metavar="DIR", help="where to write the tuned bridges (resumes)")
    u.add_argument("--methods", default="angular", help="comma-separated `l2a eval` methods whose layer sets rows "
                   "skip (l2a: the gates of --gates or the shipped ones) (default: %(default)s)")
    u.add_argument("--budgets", type=_fractions, default=(0.85, 0.7, 0.55), help="layer budgets drawn per row "
                   "(default: 0.85,0.7,0.55)")
    u.add_argument("--steps", type=_positive, default=120)
    u.add_argument("--batch", type=_positive, default=4, help="sequences per step (default: %(default)s)")
    u.add_argument("--positions", type=_positive, default=64, help="positions per step the KL reads (default: %(default)s)")
    u.add_argument("--lr", type=float, default=1e-4)
    bridge_text(u, 256)
    u.add_argument("--val", type=_positive, default=16, help="N sequences of the text held out, drawn at random (default: %(default)s)")
    u.add_argument("--val-every", type=_positive, default=20, help="steps between held-out checks (default: %(default)s)")
    u.add_argument("--seed", type=int, default=0)
    u.set_defaults(func=cmd_tune_bridges)

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
    g.add_argument("--bridges", metavar="DIR", help="skipped layers run these bridges (`l2a fit-bridges`) instead of "
                   "nothing (gates trained with bridges need theirs)")
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
