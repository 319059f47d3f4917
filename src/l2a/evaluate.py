"""evaluate: accuracy and cost of every (method, data file, budget) point, one JSON line each.

`evaluate(model, task, data_files, budgets, methods, ...)` runs each method (a `Policy`, by name from
`baselines.METHODS`) at each budget on the first `limit` items of each file, and appends one line per point
to `out` (JSON lines; `pareto.report` reads them). Existing lines for the same (task, method, data,
budget, limit) are reused, so an interrupted run resumes where it stopped. `dense` runs once, at budget 1.0.
Seeded methods (`random`) run once per seed; their per-item scores are averaged over seeds.

Fields of a line (besides method, task, data, source, budget, n, config, provenance):
- `accuracy` and `ci_low`/`ci_high`: 95% percentile bootstrap over items (1000 resamples, seed 0);
  `acc_norm` for mc (per-character normalised), `nll`/`token_acc` for gsm8k-loglik.
- `realized_layers`, `realized_groups`: mean fractions of the decisions the items actually ran with.
- `think_tokens`: mean think tokens, generated before the answer marker (gsm8k); 0 for scoring tasks.
  `forced`: share of items whose answer was budget-forced. `predictions` (gsm8k): per-item extracted
  answers; `agreement`: share of items whose answer equals the dense point's on the same data (the
  length-control measure for models whose accuracy is near zero). For a seeded method (random) both are
  seed 0's, while the accuracy is the mean over seeds.
- `axis`: which budget axis the point varies (`all` = the scalar schedule; `layers`, `heads`, `think`
  alone, the others at 1.0).
- `flops_per_token` (modeled): `CostModel.decode_flops` of the item's decision at the item's length
  (prompt + generated tokens; for mc, the mean choice sequence), averaged over items; `flops_fraction`:
  the same relative to dense.
- `kv_bytes` (modeled): `CostModel.kv_bytes` of the item's decision at the item's length, averaged;
  `kv_bytes_measured` (gsm8k only): the RowCache bytes held per row after generation, which include left
  padding and the steps after a row stopped.
- `seconds_per_item` and `tokens_per_s` (measured wall clock, after an untimed one-item warm-up, policy
  calibration excluded): tokens are generated tokens for gsm8k, processed tokens for scoring tasks. With
  `timing_repeats`, these come from the interleaved re-timing of the file's points (retime.py: `timing`
  holds its rounds) and the scoring pass's own value is kept as `seconds_per_item_single`.
- `item_scores`: each item's score (mean over seeds), in file order, so two lines on the same items can be
  compared item by item (paired.py); gsm8k-loglik adds `item_nll` (each item's summed NLL of the reference,
  mean over seeds) and `item_tokens` (its scored tokens): per-token NLL is sum(item_nll) / sum(item_tokens).

This module does not plot (`pareto.py`) and does not parse command lines (`cli.py`).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .baselines import _StaticPolicy, kept_count, make_method
from .bridges import check_line, check_policy
from .budget import Budget
from .checkpoint import policy_digest
from .cost import CostModel
from .data import load_mc
from .static import Calibration
from .results import append, finished, point_key
from .tasks import get_task


@dataclass(frozen=True)
class EvalConfig:
    """What one evaluate() call ran with; stored in every line it writes."""

    model: str | None  # model spec as given (registered name or path), None for an in-memory model
    task: str  # task name
    limit: int | None  # first `limit` items of each file (None = all)
    seeds: int  # seeds averaged for seeded methods
    batch_size: int  # items (and, for mc, sequences) per forward
    max_new_tokens: int  # generation cap (gsm8k)
    dtype: str  # model parameter dtype
    calibration: dict  # static-baseline calibration text

    def __post_init__(self):
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be a positive int or None, got {self.limit!r}")
        for name in ("seeds", "batch_size", "max_new_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")


def bootstrap_ci(scores, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-item `scores`."""
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)  # (R,)
    a = (1.0 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def budget_field(b: Budget):
    """How a budget is written in a line: the scalar (with its schedule when not the default), or the axes."""
    if b.scalar is None:
        return {"layers": b.layers, "heads": b.heads, "think": b.think}
    return b.scalar if b.schedule is None else {"scalar": b.scalar, "schedule": b.schedule}


AXES = ("all", "layers", "heads", "think")  # and "all:SCHEDULE" for a named scalar schedule


def axis_budget(value: float, axis: str) -> Budget:
    """The budget of a point on one axis: `all` is the scalar schedule (`all:NAME` a named one), an axis
    name varies that axis alone (the others at 1.0)."""
    from .budget import SCHEDULES

    if axis.startswith("all:"):
        if axis[4:] not in SCHEDULES:
            raise ValueError(f"unknown budget schedule {axis[4:]!r}; valid: {', '.join(SCHEDULES)}")
        return Budget(value, schedule=axis[4:])
    if axis not in AXES:
        raise ValueError(f"unknown budget axis {axis!r}; valid: {', '.join(AXES)}, all:SCHEDULE")
    return Budget(value) if axis == "all" else Budget(**{axis: value})


def _provenance() -> dict:
    try:
        from .record import run_record

        rec = run_record("eval", {}, {})
        return {k: rec.get(k) for k in ("versions", "git_sha", "git_dirty", "device", "threads", "time")}
    except Exception:  # provenance never fails a run
        return {}


def evaluate(
    model,
    task,
    data_files,
    budgets,
    methods,
    limit: int | None = None,
    batch_size: int = 8,
    seeds: int = 3,
    out=None,
    max_new_tokens: int = 256,
    *,
    model_name: str | None = None,
    calibration: Calibration | None = None,
    warmup: bool = True,
    progress: bool = True,
    axes=("all",),
    tuned_gates=None,
    timing_repeats: int = 0,
    timing_items: int = 100,
    retime: bool = False,
) -> list[dict]:
    """Evaluate every (method, data file, budget) point; append each to `out`; return all points' lines.

    model: a GatedModel or a model spec for `l2a.load`. task: "gsm8k", "gsm8k-loglik", "mc" (or a task
    object). data_files: paths (None = the task's default: GSM8K test, else generated). budgets: numbers,
    dicts or Budgets. methods: names from `baselines.METHODS` or Policy objects. axes: for numeric budgets,
    the axes swept (`AXES`): each number b becomes `axis_budget(b, axis)` for every axis given. With
    `timing_repeats` > 0, the points of each data file are then timed again together (retime.py) on their
    first `timing_items` items and their lines rewritten with those timings (skipped when already done,
    unless `retime`: after a change to the runtime, finished points are timed again).
    """
    if isinstance(model, (str, os.PathLike)):
        from .loading import load

        model_name = model_name or os.fspath(model)
        model = load(model)
    if model.tokenizer is None:
        raise ValueError("evaluate() needs a model with a tokenizer (GatedModel(hf, tokenizer=...))")
    task_obj = get_task(task)
    task_name = getattr(task_obj, "name", str(task))
    data_files = [data_files] if isinstance(data_files, (str, os.PathLike)) or data_files is None else list(data_files)
    points_all = []  # (axis, Budget)
    for b in budgets:
        if isinstance(b, (int, float)) and not isinstance(b, bool):
            points_all += [(axis, axis_budget(b, axis)) for axis in axes]
        else:
            points_all.append(("all" if Budget.parse(b).scalar is not None else "custom", Budget.parse(b)))
    points_all = list(dict.fromkeys(points_all))
    calibration = calibration or Calibration()
    for path in calibration.mc:  # a missing or malformed calibration file fails before any model runs
        load_mc(path)
    methods = sorted(methods, key=lambda m: m != "dense")  # dense first: static points at b=1 reuse it
    bridges = getattr(model, "bridges", None)  # skipped layers run these (bridges.py): lines say "+bridges"
    names = [m if isinstance(m, str) else m.name for m in methods]
    names = [n if bridges is None or n == "dense" else f"{n}+bridges" for n in names]
    for m in methods:  # fail on unknown names (and missing gates) before any model runs
        if isinstance(m, str):
            make_method(m, seed=0, calibration=calibration, tuned_gates=tuned_gates)
            if m.startswith("l2a") and getattr(model, "policy", None) is None:
                raise ValueError(f"method {m!r}: no gates loaded: pass --gates DIR or use a model with shipped gates")
            if m.startswith("l2a"):
                check_policy(model.policy, bridges, f"method {m!r}")
    dtype = next(model.hf.parameters()).dtype
    cfg = EvalConfig(model_name, task_name, limit, seeds, batch_size, max_new_tokens,
                     str(dtype).removeprefix("torch."), {**asdict(calibration), "mc": list(calibration.mc)})  # as JSON reads it
    cost = CostModel.from_config(model.hf.config, dtype_bytes=torch.empty((), dtype=dtype).element_size())
    if bridges is not None:
        cost = replace(cost, bridge_rank=bridges.rank)
    done = finished(out)
    provenance = _provenance()
    dense_task = getattr(task_obj, "dense_task", task_name)  # a task whose dense line equals this one's
    digest = None if getattr(model, "policy", None) is None else policy_digest(model.policy)
    results = []
    for data_file in data_files:
        rows, source = task_obj.load(data_file)
        rows = rows[:limit] if limit is not None else rows
        data_label = None if data_file is None else os.fspath(data_file)
        timed = []  # (index in results, method name, method, Budget) of the lines of this file that were measured
        for name, m in zip(names, methods):
            points = [("all", Budget(1.0))] if name == "dense" else points_all
            policies = None
            for axis, b in points:
                key = point_key(task_name, name, data_label, budget_field(b), limit)
                if key in done:
                    _check_gates(done[key], name, digest, out)
                    check_line(done[key], bridges, out)
                    _check_calibration(done[key], name, m, calibration, out)
                    if "reused_from" not in done[key]:
                        timed.append((len(results), name, m, b))
                    results.append(done[key])
                    continue
                twin = done.get(point_key(dense_task, "dense", data_label, 1.0, limit))
                if name == "dense" and twin is not None:  # prompted and run alike: the same line, labelled
                    record = dict(twin, task=task_name, reused_from=f"{dense_task} dense")
                    if out is not None:
                        append(out, record)
                    results.append(record)
                    continue
                if policies is None:  # built once per method and data file: memo and calibration are reused
                    policies = _policies(m, seeds, calibration, tuned_gates)
                dense = next((r for r in results if r["method"] == "dense" and r.get("data") == data_label),
                             done.get(point_key(task_name, "dense", data_label, 1.0, limit), twin))  # or an earlier run's
                if dense is not None and all(_static_dense(p, model, b) for p in policies):
                    # A static method at a budget that keeps everything runs exactly dense: reuse its line.
                    record = dict(dense, method=name, budget=budget_field(b), reused_from="dense",
                                  budget_axes={"layers": b.layers, "heads": b.heads, "think": b.think})
                else:
                    timed.append((len(results), name, m, b))
                    record = _run_point(model, task_obj, rows, b, policies, cfg, cost, name, progress, warmup)
                    record.update(task=task_name, data=data_label, source=source, config=asdict(cfg),
                                  provenance=provenance)
                    if getattr(task_obj, "metric_version", 1) != 1:
                        record["metric_version"] = task_obj.metric_version
                    if dense is not None and dense.get("predictions") and record.get("predictions"):
                        pairs = list(zip(record["predictions"], dense["predictions"]))
                        record["agreement"] = sum(p == q for p, q in pairs) / len(pairs)
                record["axis"] = axis
                if name.startswith("l2a") and "reused_from" not in record:
                    record["gates_digest"] = digest  # which gates made the line (resume checks it)
                if bridges is not None and name != "dense":
                    record["bridges"] = bridges.describe()
                if out is not None:
                    append(out, record)
                results.append(record)
        if timing_repeats > 0:
            from .retime import retime_file

            policies = {}  # one (first-seed) policy per method, built as the scoring pass builds them
            for _, name, m, _ in timed:
                if name not in policies:
                    policies[name] = _policies(m, 1, calibration, tuned_gates)[0]
            points = [(i, policies[name], b) for i, name, _, b in timed]
            retime_file(model, task_obj, rows, results, points, data_label, cfg, out, timing_repeats, timing_items,
                        progress, force=retime)
    return results


def _check_gates(line: dict, name: str, digest: str | None, out) -> None:
    """A finished learned-gates line is reused only for the gates that wrote it. A line without a digest
    (written before digests were recorded) cannot show which gates wrote it, so it is refused too, unless
    it is a copy of the dense line (budget 1.0 runs the dense model whatever the gates)."""
    if not name.startswith("l2a") or "reused_from" in line:
        return
    have = line.get("gates_digest")
    if have != digest:
        was = f"other gates (digest {have}, now {digest})" if have else f"unrecorded gates (no digest; now {digest})"
        raise ValueError(f"{out}: its {name!r} line at budget {line.get('budget')} was written with {was}; "
                         f"pass another --results file, or remove those lines to measure them again")


def _check_calibration(line: dict, name: str, method, calibration: Calibration, out) -> None:
    """A finished calibrated-baseline line is reused only under the calibration that wrote it (the line's
    key names the method, not its calibration text)."""
    policy = make_method(method, calibration=calibration) if isinstance(method, str) else method
    if not hasattr(policy, "calibration") or "reused_from" in line:
        return
    saved = (line.get("config") or {}).get("calibration") or {}
    was = Calibration(**{k: v for k, v in saved.items() if k in Calibration.__dataclass_fields__})
    if was != calibration:
        raise ValueError(f"{out}: its {name!r} line at budget {line.get('budget')} was calibrated on {asdict(was)}, "
                         f"not {asdict(calibration)}; pass another --results file for the other calibration")


def _static_dense(policy, model, b: Budget) -> bool:
    """True when `policy` at `b` runs exactly the dense model: a static policy keeping every layer and
    group, or the learned gates at a full budget (dense by construction, tested bit for bit)."""
    from .baselines import L2APolicy

    if isinstance(policy, L2APolicy):
        return b.layers >= 1.0 and b.heads >= 1.0 and b.think >= 1.0
    return (isinstance(policy, _StaticPolicy) and kept_count(model.n_layers, b.layers) == model.n_layers
            and kept_count(model.n_groups, b.heads) == model.n_groups and (b.think >= 1.0 or not policy.caps_think))


def _policies(m, seeds: int, calibration: Calibration, tuned_gates=None) -> list:
    if not isinstance(m, str):
        return [m]
    first = make_method(m, seed=0, calibration=calibration, tuned_gates=tuned_gates)
    if not getattr(first, "seeded", False):
        return [first]
    return [first] + [make_method(m, seed=s, calibration=calibration) for s in range(1, seeds)]


def decider(model, policy, budget: Budget, task=None, warm_rows=None, max_new_tokens: int = 4):
    """`decide(ids, mask)` of `policy` at `budget` for every row, after the policy's calibration (a one-time
    cost kept out of measured time), seeding torch with 0, and, with `task` and `warm_rows`, an untimed
    warm-up on the first row."""
    if hasattr(policy, "prepare"):
        policy.prepare(model, budget)

    def decide(ids, mask):
        return policy.decide(model, ids, mask, [budget] * ids.shape[0])

    if hasattr(policy, "score"):  # decides inside the scoring pass (scoring.routed_logprobs)
        decide.score = lambda ids, mask, *route, **kw: policy.score(model, ids, mask, [budget] * ids.shape[0], *route, **kw)

    torch.manual_seed(0)
    if task is not None and warm_rows:
        for _ in task.run(model, warm_rows[:1], decide, batch_size=1, max_new_tokens=min(4, max_new_tokens)):
            pass
    return decide


def _run_point(model, task, rows, budget: Budget, policies, cfg: EvalConfig, cost: CostModel, name: str,
               progress: bool, warmup: bool) -> dict:
    from tqdm.auto import tqdm

    runs = []  # (items, seconds) per seed
    bar = tqdm(total=len(rows) * len(policies), desc=f"{cfg.task} {name} b={budget_field(budget)}", unit="item",
               disable=not progress, leave=False, file=sys.stderr)
    try:
        for policy in policies:
            decide = decider(model, policy, budget, task if warmup else None, rows, cfg.max_new_tokens)
            items = []
            t0 = time.perf_counter()
            for batch in task.run(model, rows, decide, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens):
                items.extend(batch)
                bar.update(len(batch))
            runs.append((items, time.perf_counter() - t0))
    finally:
        bar.close()
    return _summarize(runs, task, budget, cost, name)


def _diversity(decisions: list) -> dict:
    """How input-aware a point's decisions are: distinct executed layer sets over its items, and the share of
    items on the most common one (a static method: 1 and 1.0), and the layers that set skips."""
    counts = Counter(d.layers for d in decisions)
    if not counts:
        return {"layer_sets": 0, "modal_set_share": None, "modal_skipped": None}
    modal, n = counts.most_common(1)[0]
    return {"layer_sets": len(counts), "modal_set_share": n / len(decisions),
            "modal_skipped": [i for i, keep in enumerate(modal) if not keep]}


def _mean_items(per_seed: list[list]) -> list:
    """Item-by-item mean of one per-item list per seed; a list equal in every seed is kept as it is."""
    if all(v == per_seed[0] for v in per_seed):
        return per_seed[0]
    return [round(float(np.mean(vs)), 4) for vs in zip(*per_seed)]


def _summarize(runs, task, budget: Budget, cost: CostModel, name: str) -> dict:
    n = len(runs[0][0])
    scores = np.mean([[it.score for it in items] for items, _ in runs], axis=0) if n else np.zeros(0)  # (n,)
    everything = [it for items, _ in runs for it in items]
    lo, hi = bootstrap_ci(scores)
    seconds = sum(t for _, t in runs)
    tokens = sum(it.tokens for it in everything)
    flops = [cost.decode_flops(it.decision, context=max(1, it.context)) for it in everything]
    dense = [cost.decode_flops(None, context=max(1, it.context)) for it in everything]
    measured = [it.kv_bytes_measured for it in everything if it.kv_bytes_measured is not None]

    def mean(xs):
        xs = list(xs)
        return float(sum(xs) / len(xs)) if xs else None

    record = {
        "method": name,
        "budget": budget_field(budget),
        "budget_axes": {"layers": budget.layers, "heads": budget.heads, "think": budget.think},
        "n": n,
        "accuracy": float(scores.mean()) if n else None,
        "ci_low": lo,
        "ci_high": hi,
        "realized_layers": mean(it.decision.layer_fraction for it in everything),
        "realized_groups": mean(it.decision.group_fraction(cost.n_groups) for it in everything),
        **_diversity([it.decision for it in runs[0][0]]),
        "think_tokens": mean(it.new_tokens for it in everything) or 0.0,
        "flops_per_token": mean(flops),
        "flops_fraction": sum(flops) / sum(dense) if dense else None,
        "flops_source": "modeled",
        "kv_bytes": mean(cost.kv_bytes(it.decision, tokens=it.context) for it in everything),
        "kv_bytes_source": "modeled",
        "kv_bytes_measured": mean(measured),
        "seconds_per_item": seconds / max(1, len(everything)),
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
        "seconds_source": "measured",
        "seeds": len(runs),
    }
    first = runs[0][0]
    if first and "prediction" in first[0].metrics:
        record["predictions"] = [it.metrics["prediction"] for it in first]
        if name == "dense":
            record["agreement"] = 1.0
    record["item_scores"] = [round(float(v), 4) for v in scores]
    per_item = getattr(task, "per_item", None)
    if per_item is not None:  # each item's values averaged over seeds, as its score is
        per_seed = [per_item(items) for items, _ in runs]
        record.update({k: _mean_items([p[k] for p in per_seed]) for k in per_seed[0]})
    if len(runs) > 1:
        record["accuracy_per_seed"] = [mean(it.score for it in items) for items, _ in runs]
    extras = [task.aggregate(items) for items, _ in runs]
    for k in extras[0]:
        record[k] = mean(e[k] for e in extras)
    return record
