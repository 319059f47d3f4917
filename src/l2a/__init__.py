"""l2a: resource-adaptive LLM inference with budget-conditioned gates.

The public names are imported lazily so that `import l2a` (and `l2a --help`) do not import torch.
"""

__version__ = "0.1.0"

_LAZY = {
    "Budget": "l2a.budget",
    "GateDecision": "l2a.decision",
    "CostModel": "l2a.cost",
    "GatedModel": "l2a.gated",
    "RowCache": "l2a.kvcache",
    "prune_model": "l2a.prune",
    "load": "l2a.loading",
    "GatePolicy": "l2a.gates",
    "Policy": "l2a.policy",
    "report": "l2a.pareto",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'l2a' has no attribute {name!r}")
