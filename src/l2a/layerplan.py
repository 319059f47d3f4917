"""layerplan: the per-layer runtime of a GatedModel, i.e. which rows run each decoder layer, and the wrapper
each layer becomes.

A `Plan` lists, for every decoder layer, the *parts* that run it: a part is a set of rows that execute the
layer with the same KV-head groups, and the (possibly group-sliced) module they run. `GatedLayer` wraps
one HF decoder layer (PEFT-style, the original as `base_layer`) and, while a plan is active on the shared
`Runtime`, runs it once per part on the gathered rows and scatters back; a layer no row runs executes
nothing. With no plan active the wrapper is transparent. `SoftPlan` is the differentiable masked
reference used only in training. Not here: building plans and the user API (gated.py), KV (kvcache.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .kvcache import RowCache


@dataclass
class Part:
    rows: torch.Tensor | None  # (B_p,) row indices, or None for all rows
    rows_key: tuple[int, ...]  # the same rows as a tuple (slot ownership, memo key)
    groups: tuple[int, ...] | None  # kept KV-head groups, None = all
    module: nn.Module  # the decoder layer to run (sliced copy when groups is not None)


class Plan:
    """Which rows run which layer with which groups, for one batch of decisions."""

    def __init__(self, parts: list[list[Part]], batch: int):
        self.parts = parts  # (L,) list of parts; empty = no row runs the layer
        self.batch = batch
        self._memo_src = None  # position_embeddings of the forward the memo belongs to
        self._memo: dict = {}
        self.capture: int | None = None  # layer whose output to keep in `captured`
        self.captured: torch.Tensor | None = None
        self.replay: dict[int, tuple] | None = None  # layer -> (output or None, keys, values), one prefill
        self.then = None  # called with the captured output: completes the plan inside the pass (gated.py)
        self.decisions = None  # the decisions `then` made

    def sliced(self, part: Part, kwargs: dict) -> dict:
        """kwargs (mask, position ids/embeddings) restricted to the part's rows, memoised per forward."""
        src = kwargs.get("position_embeddings")
        if src is not self._memo_src:
            self._memo_src, self._memo = src, {}
        out = self._memo.get(part.rows_key)
        if out is None:
            out = {k: self._take(v, part.rows) for k, v in kwargs.items()}
            self._memo[part.rows_key] = out
        return out

    def _take(self, v, rows):
        if isinstance(v, torch.Tensor):
            return v.index_select(0, rows) if v.dim() > 0 and v.shape[0] == self.batch else v
        if isinstance(v, tuple):  # (cos, sin), each (B|1, T, D)
            return tuple(self._take(x, rows) for x in v)
        return v


class SoftPlan:
    """Training mode: every layer runs on every row and is mixed by a differentiable gate (B, L).

    This is the masked reference of DESIGN decision 7: correct, saves nothing, used only to train gates.
    """

    def __init__(self, layer_gates: torch.Tensor):
        self.layer_gates = layer_gates  # (B, L) in [0, 1]; straight-through hard gates in training


class Runtime:
    """Shared, mutable state of one attached model (the active plan). Not an nn.Module on purpose."""

    def __init__(self):
        self.plan: Plan | None = None
        self.bridges = None  # bridges.Bridges: what rows that skip a layer run instead of nothing (None: nothing)


class GatedLayer(nn.Module):
    """Wraps one decoder layer; runs it for the rows (and groups) the active plan says."""

    def __init__(self, base_layer: nn.Module, index: int, runtime: Runtime):
        super().__init__()
        self.base_layer = base_layer
        self.index = index
        self.__dict__["_runtime"] = runtime  # plain attribute: not a submodule, not in state_dict

    def forward(self, hidden_states: torch.Tensor, *args, past_key_values=None, **kwargs):
        plan = self._runtime.plan
        if plan is None:  # transparent when no plan is active
            return self.base_layer(hidden_states, *args, past_key_values=past_key_values, **kwargs)
        if isinstance(plan, SoftPlan):
            y = self.base_layer(hidden_states, *args, past_key_values=past_key_values, **kwargs)
            g = plan.layer_gates[:, self.index, None, None].to(y.dtype)  # (B, 1, 1)
            skip = self._skip(hidden_states)  # (B, T, H) what a skipping row gets
            return skip + g * (y - skip)
        if plan.replay is not None and self.index in plan.replay:
            return self._replay(plan, hidden_states, past_key_values)
        out = self._run(plan, hidden_states, args, past_key_values, kwargs)
        if plan.capture == self.index:
            plan.captured = out
            if plan.then is not None:
                plan.then(out)
        return out

    def _replay(self, plan: Plan, hidden_states, past_key_values):
        """Reuse this layer's work from the gate pass (same prompt, mask and positions): no recompute."""
        output, keys, values = plan.replay.pop(self.index)
        if not plan.replay:
            plan.replay = None
        if isinstance(past_key_values, RowCache):
            (part,) = plan.parts[self.index]  # router layers run densely on all rows
            past_key_values.slot((self.index, part.rows_key, part.groups), part.rows_key).update(keys, values)
        return hidden_states if output is None else output

    def _skip(self, h: torch.Tensor) -> torch.Tensor:
        """What rows that skip this layer get: their input, or its bridge when bridges are on."""
        bridges = self._runtime.bridges
        return h if bridges is None else bridges(self.index, h)

    def _run(self, plan: Plan, hidden_states, args, past_key_values, kwargs):
        parts = plan.parts[self.index]
        if not parts:  # no row runs this layer: nothing executes, nothing is cached
            return self._skip(hidden_states)
        out = hidden_states  # (B, T, H)
        if self._runtime.bridges is not None and parts[0].rows is not None:
            ran = torch.zeros(plan.batch, dtype=torch.bool, device=hidden_states.device)
            for part in parts:
                ran[part.rows] = True
            idle = (~ran).nonzero().squeeze(1)  # (B_s,) rows that skip this layer
            if len(idle):
                out = out.index_copy(0, idle, self._skip(hidden_states.index_select(0, idle)))
        for part in parts:
            cache = None
            if isinstance(past_key_values, RowCache):
                cache = past_key_values.slot((self.index, part.rows_key, part.groups), part.rows_key)
            if part.rows is None:
                return part.module(hidden_states, *args, past_key_values=cache, **kwargs)
            h = hidden_states.index_select(0, part.rows)  # (B_p, T, H)
            y = part.module(h, *args, past_key_values=cache, **plan.sliced(part, kwargs))
            out = out.index_copy(0, part.rows, y)
        return out
