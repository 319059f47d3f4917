"""Budget: how much compute one request may use, as three fractions in (0, 1].

No torch here. A budget is what a request *asks* for; what it *gets* is a `GateDecision`, whose realized
fractions are what we report (DESIGN decision 8).

- ``layers``: fraction of decoder layers executed.
- ``heads``: fraction of KV-head groups kept inside the executed layers.
- ``think``: fraction of the think-token allowance (the reasoning axis).

A scalar ``Budget(0.6)`` is a fraction of dense cost, mapped onto the three axes by a fixed monotone
schedule (`SCHEDULE`): every axis is non-decreasing in the scalar and 1.0 maps to (1, 1, 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _check_fraction(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"budget {name} must be a number in (0, 1], got {value!r}") from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ValueError(f"budget {name} must be in (0, 1], got {value!r}")
    return value


def scalar_schedule(b: float) -> tuple[float, float, float]:
    """Map a scalar budget (fraction of dense cost) to (b_layer, b_head, b_think).

    Depth is the axis that saves the most measured time per unit of modeled cost on small models
    (DESIGN §3: dropping KV groups gives nothing measurable at short context), so it takes the cut
    first; heads and think only tighten once the budget falls below 0.7. Monotone in b, identity at 1.
    """
    b = _check_fraction("scalar", b)
    layers = b
    heads = 1.0 if b >= 0.7 else max(0.5, b / 0.7)
    think = 1.0 if b >= 0.7 else max(0.25, b / 0.7)
    return layers, heads, think


@dataclass(frozen=True)
class Budget:
    """A request's compute budget. ``Budget(0.6)`` or ``Budget(layers=0.7, heads=1.0, think=1.0)``."""

    scalar: float | None = None  # fraction of dense cost; mapped to the axes by `scalar_schedule`
    layers: float | None = None  # fraction of decoder layers executed
    heads: float | None = None  # fraction of KV-head groups kept in executed layers
    think: float | None = None  # fraction of the think-token allowance

    def __post_init__(self):
        axes = (self.layers, self.heads, self.think)
        if self.scalar is not None:
            if any(a is not None for a in axes):
                raise ValueError("give a budget either as one scalar or per axis (layers=, heads=, think=), not both")
            lay, head, think = scalar_schedule(self.scalar)
            object.__setattr__(self, "scalar", float(self.scalar))
        else:
            lay, head, think = (1.0 if a is None else a for a in axes)
        object.__setattr__(self, "layers", _check_fraction("layers", lay))
        object.__setattr__(self, "heads", _check_fraction("heads", head))
        object.__setattr__(self, "think", _check_fraction("think", think))

    @classmethod
    def parse(cls, value: "Budget | float | int | str | dict") -> "Budget":
        """Accept a Budget, a number, a numeric string or a dict with keys scalar/layers/heads/think."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, bool):
            raise ValueError(f"budget must be a number in (0, 1] or a Budget, got {value!r}")
        if isinstance(value, (int, float)):
            return cls(float(value))
        if isinstance(value, str):
            try:
                return cls(float(value))
            except ValueError:
                raise ValueError(f"budget must be a number in (0, 1], got {value!r}") from None
        if isinstance(value, dict):
            unknown = set(value) - {"scalar", "layers", "heads", "think"}
            if unknown:
                raise ValueError(f"unknown budget keys {sorted(unknown)}; valid: scalar, layers, heads, think")
            return cls(**value)
        raise ValueError(f"budget must be a number in (0, 1], a dict or a Budget, got {type(value).__name__}")

    @property
    def axes(self) -> tuple[float, float, float]:
        """(b_layer, b_head, b_think)."""
        return (self.layers, self.heads, self.think)

    @property
    def is_full(self) -> bool:
        return self.axes == (1.0, 1.0, 1.0)

    def to_dict(self) -> dict:
        return {"scalar": self.scalar, "layers": self.layers, "heads": self.heads, "think": self.think}
