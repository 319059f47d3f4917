"""The Policy protocol: what turns (prompt, budget) into one GateDecision per row.

Learned gates (`l2a.gates.GatePolicy`) and static baselines (`l2a.baselines`) implement the same
protocol, so the evaluator cannot tell them apart (DESIGN §1): that is what makes the Pareto comparison
fair. A policy decides once per request, at prefill (DESIGN decision 1).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from .budget import Budget
from .decision import GateDecision


@runtime_checkable
class Policy(Protocol):
    """Decides, per row, which layers and KV-head groups run under that row's budget."""

    name: str  # the `--methods` name

    def decide(
        self,
        model,  # l2a.GatedModel (policies may read model.hf, model.geometry, run early layers)
        input_ids,  # (B, T) LongTensor, left-padded
        attention_mask,  # (B, T) or None
        budgets: Sequence[Budget],  # one per row
    ) -> list[GateDecision]: ...


def as_budgets(budget, batch: int) -> list[Budget]:
    """One Budget per row from a Budget, number, dict, or a list of those."""
    if isinstance(budget, (list, tuple)):
        if len(budget) != batch:
            raise ValueError(f"got {len(budget)} budgets for a batch of {batch} rows: give one per row or a single one")
        return [Budget.parse(b) for b in budget]
    return [Budget.parse(budget)] * batch


class DensePolicy:
    """Every row runs everything, whatever its budget: the reference point of every frontier."""

    name = "dense"

    def decide(self, model, input_ids, attention_mask, budgets: Sequence[Budget]) -> list[GateDecision]:
        return [GateDecision.dense(model.n_layers)] * len(budgets)
