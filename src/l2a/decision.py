"""GateDecision: what one request executes, fixed for the whole request (DESIGN decision 1).

No torch here. A decision names, per decoder layer, whether it runs, and per executed layer which
KV-head groups it keeps (a group = one KV head and the query heads that read it; DESIGN decision 6).
It is validated on construction (shape and sanity) and against a model (`check_fits`) before it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def _as_bools(name: str, values) -> tuple[bool, ...]:
    try:
        out = tuple(values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of bools, got {type(values).__name__}") from None
    for v in out:
        if not isinstance(v, bool) and not (hasattr(v, "item") and isinstance(v.item(), bool)):
            raise ValueError(f"{name} must contain only bools, got {v!r}")
    return tuple(bool(v) for v in out)


@dataclass(frozen=True)
class GateDecision:
    """Layers kept (one bool per decoder layer), KV-head groups kept per layer, and a think allowance."""

    layers: tuple[bool, ...]  # (L,) True = the layer runs
    kv_groups: tuple[tuple[bool, ...], ...] | None = None  # (L, G) True = group kept; None = all kept
    think_tokens: int | None = None  # reasoning-token allowance; None = no cap

    def __post_init__(self):
        layers = _as_bools("layers", self.layers)
        if not layers:
            raise ValueError("a decision needs one bool per decoder layer; got an empty list")
        if not any(layers):
            raise ValueError("a decision must keep at least one decoder layer")
        object.__setattr__(self, "layers", layers)
        if self.kv_groups is not None:
            rows = tuple(_as_bools(f"kv_groups[{i}]", r) for i, r in enumerate(self.kv_groups))
            if len(rows) != len(layers):
                raise ValueError(f"kv_groups has {len(rows)} rows but layers has {len(layers)}: give one row per layer")
            widths = {len(r) for r in rows}
            if len(widths) != 1 or 0 in widths:
                raise ValueError(f"every kv_groups row must have the same, non-zero length; got lengths {sorted(widths)}")
            for i, (keep, r) in enumerate(zip(layers, rows)):
                if keep and not any(r):
                    raise ValueError(
                        f"layer {i} runs but prunes all its KV-head groups; keep at least one group or skip the layer"
                    )
            # Normalise: all-kept everywhere is the same decision as kv_groups=None.
            if all(all(r) for keep, r in zip(layers, rows) if keep):
                rows = None
            object.__setattr__(self, "kv_groups", rows)
        if self.think_tokens is not None:
            if isinstance(self.think_tokens, bool) or not isinstance(self.think_tokens, int) or self.think_tokens < 0:
                raise ValueError(f"think_tokens must be a non-negative int or None, got {self.think_tokens!r}")

    # -- constructors ---------------------------------------------------------------------------------------

    @classmethod
    def dense(cls, n_layers: int, think_tokens: int | None = None) -> "GateDecision":
        return cls(layers=(True,) * n_layers, think_tokens=think_tokens)

    @classmethod
    def dropping(cls, n_layers: int, drop) -> "GateDecision":
        """All KV groups, every layer but those in `drop` (indices)."""
        drop = set(drop)
        return cls(layers=tuple(i not in drop for i in range(n_layers)))

    @classmethod
    def from_dict(cls, d: dict) -> "GateDecision":
        unknown = set(d) - {"layers", "kv_groups", "think_tokens"}
        if unknown:
            raise ValueError(f"unknown GateDecision keys {sorted(unknown)}; valid: layers, kv_groups, think_tokens")
        return cls(layers=d["layers"], kv_groups=d.get("kv_groups"), think_tokens=d.get("think_tokens"))

    def to_dict(self) -> dict:
        return {
            "layers": list(self.layers),
            "kv_groups": None if self.kv_groups is None else [list(r) for r in self.kv_groups],
            "think_tokens": self.think_tokens,
        }

    # -- queries --------------------------------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def kept_layers(self) -> tuple[int, ...]:
        return tuple(i for i, k in enumerate(self.layers) if k)

    def groups(self, layer: int) -> tuple[int, ...] | None:
        """Kept group indices of `layer`, or None when the layer keeps all its groups."""
        if self.kv_groups is None or all(self.kv_groups[layer]):
            return None
        return tuple(g for g, k in enumerate(self.kv_groups[layer]) if k)

    @property
    def layer_fraction(self) -> float:
        """Realized fraction of decoder layers executed."""
        return sum(self.layers) / len(self.layers)

    def group_fraction(self, n_groups: int) -> float:
        """Realized fraction of KV-head groups kept, over the executed layers."""
        if self.kv_groups is None:
            return 1.0
        kept = [sum(self.kv_groups[i]) for i in self.kept_layers]
        return sum(kept) / (n_groups * len(kept))

    def kept_groups_per_layer(self, n_groups: int) -> tuple[int, ...]:
        """(L,) number of KV-head groups each layer holds: 0 for skipped layers."""
        out = []
        for i, keep in enumerate(self.layers):
            if not keep:
                out.append(0)
            elif self.kv_groups is None:
                out.append(n_groups)
            else:
                out.append(sum(self.kv_groups[i]))
        return tuple(out)

    def check_fits(self, n_layers: int, n_groups: int) -> None:
        """Raise ValueError unless this decision has the shape of a model with these sizes."""
        if len(self.layers) != n_layers:
            raise ValueError(
                f"decision has {len(self.layers)} layer flags but the model has {n_layers} decoder layers"
            )
        if self.kv_groups is not None and len(self.kv_groups[0]) != n_groups:
            raise ValueError(
                f"decision has {len(self.kv_groups[0])} KV-group flags per layer but the model has {n_groups} KV-head groups"
            )


def as_decisions(decisions: "GateDecision | Sequence[GateDecision]", batch: int) -> list[GateDecision]:
    """One decision per row: broadcast a single decision, or check a list has one per row."""
    if isinstance(decisions, GateDecision):
        return [decisions] * batch
    if isinstance(decisions, dict):
        return [GateDecision.from_dict(decisions)] * batch
    out = [GateDecision.from_dict(d) if isinstance(d, dict) else d for d in decisions]
    if len(out) != batch:
        raise ValueError(f"got {len(out)} decisions for a batch of {batch} rows: give one per row or a single one")
    for d in out:
        if not isinstance(d, GateDecision):
            raise ValueError(f"decisions must be GateDecision objects, got {type(d).__name__}")
    return out
