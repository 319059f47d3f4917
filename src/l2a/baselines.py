"""Static layer/group choices that depend only on the budget, never on the input.

These are the input-agnostic baselines (and the decisions `l2a bench` measures). Each function maps
(model size, fraction) to one `GateDecision`. No torch here. A budget fraction f keeps
`kept_count(L, f)` layers: the same count for every method, so methods compare at equal realized depth.
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
