"""Budget and GateDecision validation, and the static decisions' realized cost."""

import math

import pytest

from l2a.baselines import drop_last, even_groups, even_spaced, kept_count
from l2a.budget import Budget, scalar_schedule
from l2a.decision import GateDecision, as_decisions


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.01, 2, float("nan"), "x", None, True])
def test_budget_out_of_range(bad):
    with pytest.raises(ValueError, match="budget"):
        Budget.parse(bad)


def test_budget_axes_and_schedule():
    assert Budget(1.0).axes == (1.0, 1.0, 1.0)
    assert Budget(layers=0.7).axes == (0.7, 1.0, 1.0)
    with pytest.raises(ValueError, match="not both"):
        Budget(0.5, layers=0.5)
    with pytest.raises(ValueError, match="unknown budget keys"):
        Budget.parse({"depth": 0.5})
    with pytest.raises(ValueError, match="heads"):
        Budget(layers=0.5, heads=0.0)
    prev = None
    for i in range(1, 101):  # every axis is monotone in the scalar
        axes = scalar_schedule(i / 100)
        if prev is not None:
            assert all(a >= p for a, p in zip(axes, prev))
        prev = axes


def test_decision_validation():
    with pytest.raises(ValueError, match="at least one"):
        GateDecision(layers=[False, False])
    with pytest.raises(ValueError, match="empty"):
        GateDecision(layers=[])
    with pytest.raises(ValueError, match="prunes all its KV-head groups"):
        GateDecision(layers=[True, True], kv_groups=[[True, True], [False, False]])
    with pytest.raises(ValueError, match="one row per layer"):
        GateDecision(layers=[True, True], kv_groups=[[True, True]])
    with pytest.raises(ValueError, match="same, non-zero length"):
        GateDecision(layers=[True, True], kv_groups=[[True, True], [True]])
    with pytest.raises(ValueError, match="bools"):
        GateDecision(layers=[1, 0])
    with pytest.raises(ValueError, match="think_tokens"):
        GateDecision(layers=[True], think_tokens=-1)
    # a skipped layer may list no groups; all-kept groups normalise to None
    d = GateDecision(layers=[True, False], kv_groups=[[True, True], [False, False]])
    assert d.kv_groups is None and d.layer_fraction == 0.5
    d = GateDecision(layers=[True, True], kv_groups=[[True, False], [True, True]])
    assert d.groups(0) == (0,) and d.groups(1) is None
    assert d.group_fraction(2) == 0.75
    assert GateDecision.from_dict(d.to_dict()) == d
    with pytest.raises(ValueError, match="one per row"):
        as_decisions([d], 2)


@pytest.mark.parametrize("n", [2, 4, 16, 30])
def test_static_decisions_have_requested_cost(n):
    for f in (0.25, 0.5, 0.55, 0.7, 0.85, 1.0):
        k = kept_count(n, f)
        assert abs(k - f * n) <= 0.5 or k == 1
        for d in (even_spaced(n, f), drop_last(n, f)):
            assert sum(d.layers) == k
        d = even_spaced(n, f)
        if k >= 2:
            assert d.layers[0] and d.layers[-1]
    g = even_groups(4, 3, 0.34)
    assert g.group_fraction(3) == pytest.approx(1 / 3)
    assert math.isclose(even_groups(4, 3, 1.0).group_fraction(3), 1.0)
