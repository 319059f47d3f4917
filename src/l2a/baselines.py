"""Static baselines: decisions that depend only on the budget (and, for calibrated ones, on the model).

These are the input-agnostic baselines every learned policy is compared with, behind the same `Policy`
protocol (DESIGN §1), and the decisions `l2a bench` measures. No torch here: the calibrated methods'
scores are computed in `static.py` (imported lazily); this module holds the selection rules and `METHODS`.

A budget means the same for every method: `kept_count(L, b.layers)` layers and, in every executed layer,
`kept_count(G, b.heads)` KV-head groups, so methods compare at equal realized cost. The think axis is not
set by static methods (no cap) except `think-cap`. Per method:

| method | layers | KV-head groups |
|---|---|---|
| dense | all | all |
| even-spaced | evenly spread, first and last kept | first k |
| drop-last | the first k (early exit) | first k |
| random (seeded) | random, first and last kept | random per layer |
| block-influence | highest Block Influence (ShortGPT), first and last kept | calibrated importance |
| angular | all but the closest contiguous block (Gromov et al.), last (and first) kept | calibrated importance |
| greedy-kl | removed in greedy order under teacher-forced KL (SLEB-style; L2A's warm start), first and last kept | calibrated importance |
| greedy-swap | greedy-kl's set at each budget, refined by single-layer swaps under the same KL (per budget, not nested) | calibrated importance |
| block-swap | as greedy-swap, the swaps started from the better of greedy's set and greedy's first removals plus the best contiguous block | calibrated importance |
| static-groups | all, or even-spaced when b.layers < 1 | calibrated importance, per layer |
| think-cap | even-spaced (all at b.layers = 1) | first k; think capped at round(b.think * FULL_THINK) tokens (s1-style) |
| tuned-static | the top layers of a budget-only gate trained at that budget | top groups of that gate |
| l2a / l2a-strict / l2a-exact | learned gates (`model.decide`, threshold / strict / exact mode) | learned |
"""

from __future__ import annotations

from .decision import GateDecision


def kept_count(n: int, fraction: float) -> int:
    """Layers (or groups) kept at `fraction` of `n`: rounded, at least 1. Strict: never above f*n + 0.5."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return max(1, min(n, round(fraction * n)))


def even_spaced(n_layers: int, fraction: float, protect_first: bool = True, protect_last: bool = True) -> GateDecision:
    """Keep layers spread evenly over depth (unified layer skipping), first and last kept when asked."""
    k = kept_count(n_layers, fraction)
    if k == n_layers:
        return GateDecision.dense(n_layers)
    if k == 1:
        keep = {n_layers - 1 if protect_last and not protect_first else 0}
    else:
        lo = 0 if protect_first else 1
        hi = n_layers - 1 if protect_last else n_layers - 2
        step = (hi - lo) / (k - 1)
        keep = {lo + round(i * step) for i in range(k)}
        # Rounding can collide on small models; fill from the middle out so the count is exact.
        for i in sorted(range(n_layers), key=lambda j: abs(j - n_layers / 2)):
            if len(keep) >= k:
                break
            keep.add(i)
    return GateDecision(layers=tuple(i in keep for i in range(n_layers)))


def drop_last(n_layers: int, fraction: float) -> GateDecision:
    """Early exit: keep the first layers only."""
    k = kept_count(n_layers, fraction)
    return GateDecision(layers=tuple(i < k for i in range(n_layers)))


def even_groups(n_layers: int, n_groups: int, fraction: float, layers: GateDecision | None = None) -> GateDecision:
    """Keep the first `kept_count(G, f)` KV-head groups in every executed layer (input-agnostic)."""
    k = kept_count(n_groups, fraction)
    base = layers.layers if layers is not None else (True,) * n_layers
    row = tuple(g < k for g in range(n_groups))
    return GateDecision(layers=base, kv_groups=tuple(row for _ in range(n_layers)))


# ---- selections from calibration scores (pure; static.py computes the scores) -------------------------


def keep_most_important(importance, n_layers: int, fraction: float, protect: bool = True) -> GateDecision:
    """Keep the `kept_count(L, f)` layers with the highest importance (ShortGPT removes the lowest BI).

    First and last layers are kept first when `protect` and the count allows; ties go to the earlier layer.
    """
    if len(importance) != n_layers:
        raise ValueError(f"got {len(importance)} importance scores for {n_layers} layers")
    k = kept_count(n_layers, fraction)
    keep: list[int] = []
    if protect:
        keep = [0, n_layers - 1][: min(k, 2)] if n_layers > 1 else [0]
    rest = sorted((i for i in range(n_layers) if i not in keep), key=lambda i: (-importance[i], i))
    keep += rest[: k - len(keep)]
    return GateDecision(layers=tuple(i in keep for i in range(n_layers)))


def drop_block(distance, n_layers: int, fraction: float, protect_first: bool = True) -> GateDecision:
    """Drop the contiguous block of n = L - kept_count(L, f) layers whose ends are closest (Gromov et al.).

    `distance[i][j]` is the angular distance between the residual stream entering layer i and entering
    layer j (j = L: after the last layer). Dropping layers l..l+n-1 is scored by distance[l][l+n]. The last
    layer is always kept (l+n <= L-1), the first too when `protect_first` and there is room; ties go to the
    earliest block.
    """
    n = n_layers - kept_count(n_layers, fraction)
    if n == 0:
        return GateDecision.dense(n_layers)
    lo = 1 if protect_first and n <= n_layers - 2 else 0
    starts = range(lo, n_layers - n)  # l + n <= L - 1: the last layer stays
    best = min(starts, key=lambda l: (distance[l][l + n], l))
    return GateDecision(layers=tuple(not (best <= i < best + n) for i in range(n_layers)))


def top_groups(importance, n_groups: int, fraction: float, layers: GateDecision) -> GateDecision:
    """Keep the `kept_count(G, f)` most important KV-head groups of every executed layer.

    `importance[l][g]`: higher = more important; ties go to the lower group index.
    """
    k = kept_count(n_groups, fraction)
    rows = []
    for scores in importance:
        best = sorted(range(n_groups), key=lambda g: (-scores[g], g))[:k]
        rows.append(tuple(g in best for g in range(n_groups)))
    return GateDecision(layers=layers.layers, kv_groups=tuple(rows))


def random_decision(n_layers: int, n_groups: int, layers: float, heads: float, seed: int) -> GateDecision:
    """Random kept layers (first and last protected) and random kept groups per layer, from `seed` only."""
    import random

    rng = random.Random(f"l2a-random-{seed}-{n_layers}-{n_groups}-{layers}-{heads}")  # str seeds are stable
    k = kept_count(n_layers, layers)
    ends = [0, n_layers - 1][: min(k, 2)] if n_layers > 1 else [0]
    middle = [i for i in range(n_layers) if i not in ends]
    keep = set(ends) | set(rng.sample(middle, k - len(ends)))
    kg = kept_count(n_groups, heads)
    rows = []
    for _ in range(n_layers):
        kept = set(rng.sample(range(n_groups), kg))
        rows.append(tuple(g in kept for g in range(n_groups)))
    return GateDecision(layers=tuple(i in keep for i in range(n_layers)), kv_groups=tuple(rows))


# ---- policies (the `--methods`) -----------------------------------------------------------------------


class _StaticPolicy:
    """An input-agnostic policy: one decision per budget, the same for every row (memoised)."""

    name = "static"
    seeded = False  # True: the evaluator averages it over seeds
    caps_think = False  # True: sets a think allowance (not dense even when every layer runs)

    def __init__(self):
        self._memo: dict = {}

    def decision(self, model, budget) -> GateDecision:
        raise NotImplementedError

    def decide(self, model, input_ids, attention_mask, budgets) -> list[GateDecision]:
        out = []
        for b in budgets:
            key = (id(model), b.axes)
            if key not in self._memo:
                self._memo[key] = self.decision(model, b)
            out.append(self._memo[key])
        return out


class EvenSpacedPolicy(_StaticPolicy):
    """Layers spread evenly over depth (first and last kept); the first groups of each layer."""

    name = "even-spaced"

    def decision(self, model, budget) -> GateDecision:
        layers = even_spaced(model.n_layers, budget.layers)
        return even_groups(model.n_layers, model.n_groups, budget.heads, layers=layers)


class DropLastPolicy(_StaticPolicy):
    """Early exit: the first layers only; the first groups of each layer."""

    name = "drop-last"

    def decision(self, model, budget) -> GateDecision:
        layers = drop_last(model.n_layers, budget.layers)
        return even_groups(model.n_layers, model.n_groups, budget.heads, layers=layers)


FULL_THINK = 256  # think-cap's allowance at b.think = 1 would be this; 1 itself means uncapped


class ThinkCapPolicy(_StaticPolicy):
    """A fixed think cap for every prompt (s1-style budget forcing): round(b.think * FULL_THINK) tokens,
    then the answer is forced; layers and groups as even-spaced (all of them on the think axis alone)."""

    name = "think-cap"
    caps_think = True

    def decision(self, model, budget) -> GateDecision:
        d = EvenSpacedPolicy().decision(model, budget)
        cap = None if budget.think >= 1.0 else round(budget.think * FULL_THINK)
        return GateDecision(layers=d.layers, kv_groups=d.kv_groups, think_tokens=cap)


class RandomPolicy(_StaticPolicy):
    """Random layers (first and last protected) and random groups, fixed by the seed."""

    name = "random"
    seeded = True

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed

    def decision(self, model, budget) -> GateDecision:
        return random_decision(model.n_layers, model.n_groups, budget.layers, budget.heads, self.seed)


class L2APolicy:
    """The learned gates attached to the model (`model.policy`), through `model.decide`."""

    name = "l2a"
    seeded = False

    def __init__(self, mode: str = "threshold"):
        self.mode = mode
        if mode != "threshold":
            self.name = f"l2a-{mode}"

    def decide(self, model, input_ids, attention_mask, budgets) -> list[GateDecision]:
        self._check(model)
        return list(model.decide(input_ids, list(budgets), attention_mask=attention_mask, mode=self.mode))

    def score(self, model, input_ids, attention_mask, budgets, route_mask, route_from, **forward_kw):
        """(logits, one decision per row) of a scoring pass that decides as it goes: its first layers are the
        router pass, which reads each row's prompt positions (`route_mask`), so the prompt is not run twice.
        Row i runs the decision read from row `route_from[i]`."""
        self._check(model)
        logits = model.forward(input_ids, attention_mask, budget=list(budgets), mode=self.mode,
                               route_mask=route_mask, route_from=route_from, **forward_kw)
        return logits, list(model.last_decisions)

    @staticmethod
    def _check(model):
        if getattr(model, "policy", None) is None:
            raise ValueError("no gates loaded: pass --gates DIR or use a model with shipped gates")


class TunedStaticPolicy(_StaticPolicy):
    """The paper's "separately tuned model per budget": one budget-only gate set trained at each budget
    (`l2a train --fixed-budget B`, router input zeroed), read from `DIR/b{B:.2f}/`. At budget b it keeps
    the `kept_count(L, b)` layers (and per layer `kept_count(G, b.heads)` groups) its logits rank highest,
    protected layers first, so it runs exactly the cost every other method runs at b."""

    name = "tuned-static"

    def __init__(self, directory):
        super().__init__()
        from pathlib import Path

        if directory is None:
            raise ValueError("tuned-static needs --tuned-gates DIR holding one artifact per budget (DIR/b0.70/, ...), "
                             "each from `l2a train --fixed-budget 0.7 --gates-out DIR/b0.70`")
        self.directory = Path(directory)

    def _artifact(self, b: float):
        path = self.directory / f"b{b:.2f}"
        if not path.is_dir():
            have = sorted(p.name for p in self.directory.glob("b*") if p.is_dir()) if self.directory.is_dir() else []
            raise ValueError(f"tuned-static has no gates for budget {b:.2f} in {self.directory} "
                             f"(found: {', '.join(have) or 'none'}); train them with "
                             f"`l2a train --fixed-budget {b:.2f} --gates-out {path}`")
        return path

    def decision(self, model, budget) -> GateDecision:
        if budget.layers >= 1.0 and budget.heads >= 1.0:
            return GateDecision.dense(model.n_layers)
        import torch

        from .checkpoint import load_gates

        policy = load_gates(self._artifact(budget.layers), model.hf)
        c = policy.config
        with torch.no_grad():  # budget-only: the router input is zeroed, one ranking for every prompt
            feats = policy.features(torch.zeros(1, c.hidden))
            lay, grp = policy.gate_logits(feats, torch.tensor([[policy.effective(budget.layers), budget.heads]]))
        order = lay[0].argsort(descending=True).tolist()  # gateable layers, best first
        k = kept_count(c.n_layers, budget.layers) - c.protected
        keep = set(range(c.router_layers)) | set(range(c.n_layers - c.protect_last, c.n_layers))
        keep |= {c.gateable[j] for j in order[: max(0, k)]}
        layers = tuple(i in keep for i in range(c.n_layers))
        if budget.heads >= 1.0:
            return GateDecision(layers=layers)
        kg = kept_count(c.n_groups, budget.heads)
        top = grp[0].argsort(-1, descending=True)[:, :kg].tolist()  # (L, kg)
        return GateDecision(layers=layers, kv_groups=tuple(tuple(g in t for g in range(c.n_groups)) for t in top))


def _dense(seed=0, calibration=None, **_):
    from .policy import DensePolicy

    return DensePolicy()


def _calibrated(cls_name: str):
    def factory(seed=0, calibration=None, **_):
        from . import static

        return getattr(static, cls_name)(calibration)

    return factory


# name -> factory(seed=0, calibration: static.Calibration | None = None, tuned_gates=None) -> Policy
METHODS = {
    "dense": _dense,
    "l2a": lambda seed=0, calibration=None, **_: L2APolicy("threshold"),
    "l2a-strict": lambda seed=0, calibration=None, **_: L2APolicy("strict"),
    "l2a-exact": lambda seed=0, calibration=None, **_: L2APolicy("exact"),
    "even-spaced": lambda seed=0, calibration=None, **_: EvenSpacedPolicy(),
    "drop-last": lambda seed=0, calibration=None, **_: DropLastPolicy(),
    "random": lambda seed=0, calibration=None, **_: RandomPolicy(seed),
    "block-influence": _calibrated("BlockInfluencePolicy"),
    "angular": _calibrated("AngularPolicy"),
    "greedy-kl": _calibrated("GreedyKLPolicy"),
    "greedy-swap": _calibrated("GreedySwapPolicy"),
    "block-swap": _calibrated("BlockSwapPolicy"),
    "static-groups": _calibrated("StaticGroupsPolicy"),
    "think-cap": lambda seed=0, calibration=None, **_: ThinkCapPolicy(),
    "tuned-static": lambda seed=0, calibration=None, tuned_gates=None, **_: TunedStaticPolicy(tuned_gates),
}


def make_method(name: str, seed: int = 0, calibration=None, tuned_gates=None):
    """The policy behind `--methods name`; ValueError lists the valid names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name](seed=seed, calibration=calibration, tuned_gates=tuned_gates)
