"""Tuning bridges end to end: the ridge maps (bridges.py) refit by distillation through the model.

A ridge bridge is fit layer by layer, each on the dense model's own inputs to that layer. When a row skips
several layers, the later bridges see inputs the earlier bridges produced, and their errors compound (the
gap to dense grows fastest at the lowest budgets). Tuning starts from the ridge maps and minimizes

    KL(dense ‖ model with the row's layer set skipped and bridged)

over next-token distributions, by AdamW on the bridges alone (the base weights stay frozen), with each row
of each step skipping the layer set a method (`--methods`, any `l2a eval` method: a static baseline, or the
learned gates with `--gates`) chooses for it at a budget drawn from `budgets`. `val` sequences of the
text, drawn at random (seeded), are held out: every `val_every` steps their KL under each (method,
budget) is measured, and the artifact is the step with the lowest mean held-out KL (the ridge maps, step
0, if no step beats them).

The text is the static baselines' calibration text (static.calibration_sequences), as for the ridge fit.
The loss reads `positions` randomly drawn positions per step (shared by the rows), each row's first token
(the attention sink) and padding excluded: the LM head and the vocabulary-wide ops are most of a step's
cost otherwise. Progress bar; state saved at each check; an interrupted run resumes.
Not here: the maps, their ridge fit and the artifact (bridges.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .static import Calibration

STATE = "tune_state.safetensors"


@dataclass(frozen=True)
class TuneConfig:
    """How bridges are tuned (recorded in the tuned bridges' config)."""

    methods: tuple[str, ...] = ("angular",)  # whose layer sets the rows skip (cycled over rows)
    budgets: tuple[float, ...] = (0.85, 0.7, 0.55)  # layer budgets drawn per row
    steps: int = 120
    batch: int = 4  # sequences per step
    positions: int = 64  # positions per step the loss reads
    lr: float = 1e-4  # AdamW, no weight decay
    calibration: Calibration = Calibration(n=256)  # the text (its first n GSM8K chains, n pairs per MC source)
    mc_pairs: int | None = None  # MC pairs of calibration.mc (None: calibration.n)
    val: int = 16  # sequences of the text held out (drawn at random, seeded)
    val_every: int = 20
    seed: int = 0
    gates: str | None = None  # the gate artifact `l2a` decided with (recorded, not read here)

    def __post_init__(self):
        if isinstance(self.calibration, dict):  # read back from JSON
            object.__setattr__(self, "calibration", Calibration(**self.calibration))
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "budgets", tuple(float(b) for b in self.budgets))
        if not self.methods or not self.budgets or not all(0 < b < 1 for b in self.budgets):
            raise ValueError(f"tuning needs at least one method and layer budgets in (0, 1), got "
                             f"{self.methods!r}, {self.budgets!r}")
        for name in ("steps", "batch", "positions", "val", "val_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TuneConfig.{name} must be a positive int, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"TuneConfig.lr must be positive, got {self.lr!r}")


def _teacher(model, ids, mask, keep) -> torch.Tensor:
    """(M, V) the dense model's log-probs at the `keep` (B, T) positions, packed row-major."""
    from .gated import prefill_positions

    with torch.no_grad():
        return torch.log_softmax(model.hf(input_ids=ids, attention_mask=mask, position_ids=prefill_positions(mask),
                                          use_cache=False, logits_to_keep=keep).logits.float(), -1)


def _kl(model, ids, mask, keep, decisions, teacher=None) -> torch.Tensor:
    """(M,) KL(dense ‖ bridged) at the `keep` (B, T) positions; gradient into the bridges."""
    from .gated import prefill_positions

    teacher = _teacher(model, ids, mask, keep) if teacher is None else teacher  # (M, V)
    with model._active(model.plan(decisions)):
        student = torch.log_softmax(model.hf(input_ids=ids, attention_mask=mask, position_ids=prefill_positions(mask),
                                             use_cache=False, logits_to_keep=keep).logits.float(), -1)  # (M, V)
    return (teacher.exp() * (teacher - student)).sum(-1)


def _loss_positions(mask, n: int | None, g: torch.Generator | None) -> torch.Tensor:
    """(B, T) bool: positions whose prediction is scored, real tokens but each row's first and last
    (the sink; the last predicts nothing in the text), at most `n` columns drawn with `g` (None: all)."""
    first = mask.long().cumsum(1) == 1
    keep = mask.bool() & ~first
    keep[:, -1] = False
    if n is not None and n < keep.shape[1]:
        cols = torch.zeros(keep.shape[1], dtype=torch.bool)
        cols[torch.randperm(keep.shape[1], generator=g)[:n]] = True
        keep &= cols
    return keep


class _Sets:
    """Each (method, budget)'s layer set for a row, through the evaluator's policies. A static policy's set
    is the same for every row: it is decided once, at construction (under the bridges then attached, so a
    search under bridges is the one `l2a eval --bridges` ran and cached)."""

    def __init__(self, model, config: TuneConfig):
        from .baselines import _StaticPolicy, make_method
        from .evaluate import axis_budget, decider

        self.deciders, self.fixed = {}, {}
        for m in config.methods:
            for b in config.budgets:
                policy, budget = make_method(m, calibration=config.calibration), axis_budget(b, "layers")
                self.deciders[(m, b)] = decider(model, policy, budget)
                if isinstance(policy, _StaticPolicy):
                    self.fixed[(m, b)] = policy.decision(model, budget)

    def __call__(self, ids, mask, pairs) -> list:
        """One decision per row of ids/mask (B, T); row i's from pairs[i] = (method, budget)."""
        return [self.fixed[p] if p in self.fixed else self.deciders[p](ids[i:i + 1], mask[i:i + 1])[0]
                for i, p in enumerate(pairs)]


def _val_kl(model, val, pad, sets, config) -> dict:
    """Mean held-out KL per (method, budget) and overall, all positions of every held-out sequence."""
    from .scoring import left_pad

    total = dict.fromkeys(sets.deciders, 0.0)
    count = 0
    with torch.no_grad():
        for start in range(0, len(val), config.batch):
            ids, mask = left_pad(val[start:start + config.batch], pad, model.device)  # (B, T)
            keep = _loss_positions(mask, None, None)
            teacher = _teacher(model, ids, mask, keep)  # (M, V)
            for pair in total:
                total[pair] += float(_kl(model, ids, mask, keep, sets(ids, mask, [pair] * len(ids)), teacher).sum())
            count += int(keep.sum())
    out = {f"{m}@{b}": t / count for (m, b), t in total.items()}
    return {**out, "mean": sum(out.values()) / len(out)}


def tune_bridges(model, bridges, config: TuneConfig = TuneConfig(), out: str | Path | None = None,
                 progress: bool = True):
    """Tune `bridges` (fit on `model`) by distillation; returns new Bridges (the input is not changed).
    With `out`, the state is saved there at each check and a run there resumes."""
    from tqdm.auto import tqdm

    from .bridges import Bridges
    from .scoring import left_pad
    from .static import calibration_sequences

    if model._runtime.plan is not None:
        raise RuntimeError("tune_bridges() needs the GatedModel idle (no forward or generate running)")
    seqs, pad, _ = calibration_sequences(model, config.calibration, config.mc_pairs)
    if len(seqs) < config.val + config.batch:
        raise ValueError(f"tuning needs more than val + batch = {config.val + config.batch} sequences, got {len(seqs)}")
    held = set(torch.randperm(len(seqs), generator=torch.Generator().manual_seed(config.seed))[:config.val].tolist())
    train = [x for i, x in enumerate(seqs) if i not in held]
    val = [x for i, x in enumerate(seqs) if i in held]
    tuned = Bridges(*(None if t is None else t.detach().clone() for t in (bridges.w, bridges.b, bridges.u, bridges.v)),
                    config=dataclasses.replace(bridges.config, tune=config), base=bridges.base).to(model.device)
    params = [t for t in (tuned.w, tuned.b, tuned.u, tuned.v) if t is not None]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(config.seed)
    pairs = [(m, b) for m in config.methods for b in config.budgets]
    with model.bridged(bridges):
        sets = _Sets(model, config)
    with model.bridged(tuned):
        step, log, best = 0, [], None
        state = _load(out, tuned, opt, g, config, bridges.digest()) if out is not None else None
        if state is not None:
            step, log, best = state
        else:
            log.append({"step": 0, "val_kl": _val_kl(model, val, pad, sets, config)})
            best = (0, log[0]["val_kl"]["mean"], [t.detach().clone() for t in params])
        for t in params:
            t.requires_grad_(True)
        bar = tqdm(range(step, config.steps), initial=step, total=config.steps, desc="tune bridges", disable=not progress)
        try:
            for step in bar:
                rows = torch.randint(len(train), (config.batch,), generator=g).tolist()
                ids, mask = left_pad([train[i] for i in rows], pad, model.device)  # (B, T)
                keep = _loss_positions(mask, config.positions, g)  # (B, T)
                which = [pairs[int(i)] for i in torch.randint(len(pairs), (config.batch,), generator=g)]
                with torch.no_grad():
                    decisions = sets(ids, mask, which)
                loss = _kl(model, ids, mask, keep, decisions).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.set_postfix(kl=f"{loss.item():.3f}", best=f"{best[1]:.4f}@{best[0]}")
                if (step + 1) % config.val_every == 0 or step + 1 == config.steps:
                    val_kl = _val_kl(model, val, pad, sets, config)
                    log.append({"step": step + 1, "train_kl": loss.item(), "val_kl": val_kl})
                    if val_kl["mean"] < best[1]:
                        best = (step + 1, val_kl["mean"], [t.detach().clone() for t in params])
                    if out is not None:
                        _save(out, step + 1, tuned, opt, g, config, log, best, bridges.digest())
        finally:
            for t in params:
                t.requires_grad_(False)
    with torch.no_grad():
        for t, b in zip(params, best[2]):
            t.copy_(b)
    tuned.fit = {"start": {"digest": bridges.digest(), **bridges.fit},  # the maps tuning started from
                 "tune": {"selected_step": best[0], "val_kl": next(r["val_kl"] for r in log if r["step"] == best[0]),
                          "ridge_val_kl": log[0]["val_kl"], "log": log, "train_sequences": len(train)}}
    tuned._digest = None
    return tuned


# ---- resuming ----------------------------------------------------------------------------------------


def _save(out, step, tuned, opt, g, config, log, best, start: str):
    from .checkpoint import save_state

    Path(out).mkdir(parents=True, exist_ok=True)
    save_state(Path(out) / STATE, tuned, opt, g, {f"best.{i}": t for i, t in enumerate(best[2])},
               {"step": step, "config": dataclasses.asdict(config), "start": start, "log": log, "best": list(best[:2])})


def _load(out, tuned, opt, g, config, start: str):
    """(step, log, best) of the run saved in `out`, its state loaded into tuned/opt/g; None: no run there.
    `start`: the digest of the bridges the run must have started from."""
    from .checkpoint import read_state, restore_state

    got = read_state(Path(out) / STATE)
    if got is None:
        return None
    tensors, meta = got
    if meta["config"] != json.loads(json.dumps(dataclasses.asdict(config))) or meta.get("start") != start:
        raise ValueError(f"{out} holds a tuning run with another config or from other bridges (started from "
                         f"{meta.get('start')}, these are {start}); use another --bridges-out or the same flags")
    extra = restore_state(tensors, tuned, opt, g)
    return meta["step"], meta["log"], (*meta["best"], [extra[f"best.{i}"] for i in range(len(extra))])


def val_gain(tuned) -> float:
    """Relative drop of the held-out KL from the ridge maps to the tuned ones (0: tuning kept the ridge maps)."""
    t = tuned.fit["tune"]
    ridge, got = t["ridge_val_kl"]["mean"], t["val_kl"]["mean"]
    return 0.0 if not ridge or math.isclose(ridge, got) else 1 - got / ridge
