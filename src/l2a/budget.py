"""Budget: how much compute one request may use, as three fractions in (0, 1].

No torch here. A budget is what a request *asks* for; what it *gets* is a `GateDecision`, whose realized
fractions are what we report (DESIGN decision 8).

- ``layers``: fraction of decoder layers executed.
- ``heads``: fraction of KV-head groups kept inside the executed layers.
- ``think``: fraction of the think-token allowance (the reasoning axis).

A scalar ``Budget(0.6)`` is a fraction of dense cost, mapped onto the three axes by a named monotone
schedule (`SCHEDULES`, default `DEFAULT_SCHEDULE`): every axis is non-decreasing in the scalar and 1.0
maps to (1, 1, 1). ``Budget(0.6, schedule="balanced")`` picks another.
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


def _layers_first(b: float) -> tuple[float, float, float]:
    """Depth takes the cut first; heads and think tighten only below 0.7."""
    heads = 1.0 if b >= 0.7 else max(0.5, b / 0.7)
    think = 1.0 if b >= 0.7 else max(0.25, b / 0.7)
    return b, heads, think


def _think_first(b: float) -> tuple[float, float, float]:
    """The think allowance takes the cut first; depth tightens only below 0.7."""
    layers = 1.0 if b >= 0.7 else max(0.4, b / 0.7)
    return layers, 1.0, b


def _balanced(b: float) -> tuple[float, float, float]:
    """Depth and think share the cut: generation cost ~ layers x tokens, so each takes sqrt(b)."""
    r = math.sqrt(b)
    return r, 1.0, r


SCHEDULES = {"layers-first": _layers_first, "think-first": _think_first, "balanced": _balanced}
# Chosen by measurement (scripts/schedule.sh): see docs/results/think.md "Choosing the schedule".
DEFAULT_SCHEDULE = "think-first"


def scalar_schedule(b: float, schedule: str | None = None) -> tuple[float, float, float]:
    """Map a scalar budget (fraction of dense cost) to (b_layer, b_head, b_think) by a named schedule.

    Every schedule is non-decreasing on every axis in b and maps 1.0 to (1, 1, 1). The default was
    chosen as the one whose frontier (answer agreement with dense vs measured seconds, GSM8K train
    split) was best on the embedded default.
    """
    b = _check_fraction("scalar", b)
    name = DEFAULT_SCHEDULE if schedule is None else schedule
    if name not in SCHEDULES:
        raise ValueError(f"unknown budget schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](b)


@dataclass(frozen=True)
class Budget:
    """A request's compute budget. ``Budget(0.6)`` or ``Budget(layers=0.7, heads=1.0, think=1.0)``."""

    scalar: float | None = None  # fraction of dense cost; mapped to the axes by `scalar_schedule`
    layers: float | None = None  # fraction of decoder layers executed
    heads: float | None = None  # fraction of KV-head groups kept in executed layers
    think: float | None = None  # fraction of the think-token allowance
    schedule: str | None = None  # scalar -> axes schedule (`SCHEDULES`); None = DEFAULT_SCHEDULE

    def __post_init__(self):
        axes = (self.layers, self.heads, self.think)
        if self.scalar is not None:
            if any(a is not None for a in axes):
                raise ValueError("give a budget either as one scalar or per axis (layers=, heads=, think=), not both")
            lay, head, think = scalar_schedule(self.scalar, self.schedule)
            object.__setattr__(self, "scalar", float(self.scalar))
        else:
            if self.schedule is not None:
                raise ValueError("a schedule maps a scalar budget: give Budget(scalar, schedule=...)")
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
            unknown = set(value) - {"scalar", "layers", "heads", "think", "schedule"}
            if unknown:
                raise ValueError(f"unknown budget keys {sorted(unknown)}; valid: scalar, layers, heads, think, schedule")
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
        return {"scalar": self.scalar, "layers": self.layers, "heads": self.heads, "think": self.think,
                "schedule": self.schedule}
