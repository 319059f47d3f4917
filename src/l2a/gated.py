"""GatedModel: run a Hugging Face causal LM with one gate decision per row; skipped work never runs.

The only module that mutates HF models. Attaching replaces each decoder layer in the model's ModuleList by
a `GatedLayer` that holds the original as `base_layer` (PEFT-style) and calls it unchanged; HF's own
`forward`, mask code and `generate` loop keep running (DESIGN §6 rule 5). `detach()` puts the originals
back. With no plan active (plain `m.hf(...)` calls) the wrappers are transparent.

Per forward, GatedModel builds a `Plan` (layerplan.py) saying for every layer which *parts* run it: a
part is a set of rows that execute the layer with the same KV-head groups, and the (possibly
group-sliced) module they run. A layer is run once per part on the gathered rows and scattered back
(DESIGN decision 7); a batch with one decision has a single part covering all rows, so it runs exactly
HF's computation with no gather. KV lives in a `RowCache` slot per part. This module does not decide
anything: decisions come from a policy.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import torch
from torch import nn

from . import arch
from .decision import GateDecision, as_decisions
from .policy import as_budgets
from .kvcache import RowCache, prepare
from .layerplan import GatedLayer, Part, Plan, Runtime, SoftPlan


class _CallbackStreamer:
    """Adapts `on_token(tokens: (B,) LongTensor)` to HF's streamer protocol (first put is the prompt)."""

    def __init__(self, on_token: Callable[[torch.Tensor], None]):
        self.on_token, self._prompt_seen = on_token, False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.on_token(value.reshape(-1))

    def end(self):
        pass


def prefill_positions(attention_mask):
    """The position ids HF `generate` gives a (left-padded) prefill, so a router pass computed here is the
    one `generate` replays; every path that decides (decide, forward, generate) uses them."""
    if attention_mask is None:
        return None
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


class GatedModel:
    """A transformers causal LM that runs one `GateDecision` per row.

    `GatedModel(hf_model, tokenizer=None)` attaches in place (reversible with `detach()`); `m.hf` is the
    transformers model and `m.tokenizer` its tokenizer.
    """

    def __init__(self, hf_model: nn.Module, tokenizer=None):
        self.spec = arch.spec_for(hf_model)  # raises for unsupported architectures
        self.geometry = arch.geometry(hf_model.config)
        self.hf = hf_model
        self.tokenizer = tokenizer
        self.policy = None  # a GatePolicy (or any Policy) deciding from budgets
        self.gates_path = None  # where the policy's artifact was loaded from
        self.answer_format = None  # reasoning.AnswerFormat forced at a think allowance (None: from the tokenizer)
        self.last_think = None  # the budget-forcing processor of the last generate (forced_at per row)
        self._runtime = Runtime()
        self._sliced: dict[tuple[int, tuple[int, ...]], nn.Module] = {}  # (layer, groups) -> sliced layer
        layers = arch.decoder_layers(hf_model)
        if any(isinstance(layer, GatedLayer) for layer in layers):
            raise ValueError("this model already has a GatedModel attached; detach() it first")
        for i in range(len(layers)):
            layers[i] = GatedLayer(layers[i], i, self._runtime)
        self._attached = True

    # -- attach / detach ---------------------------------------------------------------------------------

    def detach(self) -> nn.Module:
        """Restore the original decoder layers and return the unchanged transformers model."""
        self._check_attached()
        layers = arch.decoder_layers(self.hf)
        for i in range(len(layers)):
            layers[i] = layers[i].base_layer
        self._attached = False
        self._sliced.clear()
        return self.hf

    def _check_attached(self):
        if not self._attached:
            raise RuntimeError("this GatedModel was detached; attach a new one to the model")

    @property
    def n_layers(self) -> int:
        return self.geometry.n_layers

    @property
    def n_groups(self) -> int:
        return self.geometry.n_kv

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def dense_decision(self) -> GateDecision:
        return GateDecision.dense(self.n_layers)

    # -- planning ---------------------------------------------------------------------------------------

    def _module(self, layer: int, groups: tuple[int, ...] | None) -> nn.Module:
        base = arch.decoder_layers(self.hf)[layer].base_layer
        if groups is None:
            return base
        key = (layer, groups)
        if key not in self._sliced:
            # Built outside inference mode so a module first made under generate() also serves training.
            with torch.inference_mode(False), torch.no_grad():
                attn = arch.slice_attention(getattr(base, self.spec.attn), self.spec, self.geometry, groups)
                self._sliced[key] = arch.with_attention(base, self.spec, attn)
        return self._sliced[key]

    def plan(self, decisions: Sequence[GateDecision]) -> Plan:
        """Group rows by what they run in each layer."""
        self._check_attached()
        for d in decisions:
            d.check_fits(self.n_layers, self.n_groups)
        batch, device = len(decisions), self.device
        parts: list[list[Part]] = []
        for layer in range(self.n_layers):
            by_groups: dict = {}
            for row, d in enumerate(decisions):
                if d.layers[layer]:
                    by_groups.setdefault(d.groups(layer), []).append(row)
            layer_parts = []
            for groups, rows in by_groups.items():
                rows_key = tuple(rows)
                idx = None if len(rows) == batch else torch.tensor(rows, dtype=torch.long, device=device)
                layer_parts.append(Part(idx, rows_key, groups, self._module(layer, groups)))
            parts.append(layer_parts)
        return Plan(parts, batch)

    @contextmanager
    def _active(self, plan):
        if self._runtime.plan is not None:
            raise RuntimeError("GatedModel is not re-entrant: a forward or generate is already running")
        self._runtime.plan = plan
        try:
            yield plan
        finally:
            self._runtime.plan = None

    @property
    def bridges(self):
        """The bridges (bridges.py) rows run for the layers they skip; None: skipped layers run nothing."""
        return self._runtime.bridges

    @bridges.setter
    def bridges(self, bridges):
        if bridges is not None and (bridges.n_layers != self.n_layers or bridges.hidden != self.hf.config.hidden_size):
            raise ValueError(f"bridges for {bridges.n_layers} layers of width {bridges.hidden} do not fit this model "
                             f"({self.n_layers} layers of width {self.hf.config.hidden_size})")
        if bridges is not None:
            bridges.to(self.device)
        self._runtime.bridges = bridges

    def bridged(self, bridges):
        """Within the block, skipped layers run `bridges` (None: nothing)."""
        return self._swapped("bridges", bridges)

    def using(self, policy):
        """Within the block, `policy` decides (gates not attached to this model: an ablation, another artifact)."""
        return self._swapped("policy", policy)

    @contextmanager
    def _swapped(self, attr: str, value):
        saved = getattr(self, attr)
        setattr(self, attr, value)
        try:
            yield self
        finally:
            setattr(self, attr, saved)

    def _decisions(self, decisions, batch: int) -> list[GateDecision]:
        if decisions is None:
            return [self.dense_decision()] * batch
        return as_decisions(decisions, batch)

    # -- deciding --------------------------------------------------------------------------------------

    def _router_plan(self, batch: int) -> tuple[Plan, list[GateDecision]]:
        """The plan of the router layers alone (run densely on every row), capturing their output."""
        k = self.policy.config.router_layers
        early = [GateDecision(layers=tuple(i < k for i in range(self.n_layers)))] * batch
        plan = self.plan(early)
        plan.capture = k - 1
        return plan, early

    def _router_pass(self, input_ids, attention_mask, position_ids):
        """Run the first `router_layers` layers densely on all rows: (hidden (B, T, H), replay dict)."""
        k = self.policy.config.router_layers
        plan, early = self._router_plan(input_ids.shape[0])
        cache = RowCache(len(early), tuple(early))
        owner, _ = arch.decoder_owner(self.hf)
        with self._active(plan), torch.no_grad():
            owner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  past_key_values=cache, use_cache=True)
        slots = {key[0]: layer for key, (_, layer, _) in cache._slots.items()}
        replay = {i: (plan.captured if i == k - 1 else None, slots[i].keys, slots[i].values) for i in range(k)}
        return plan.captured, replay

    def _decide(self, input_ids, attention_mask, budget, mode, position_ids, route_mask=None, route_from=None):
        """(decisions, replay of the router pass), the router pass run on its own."""
        budgets = self._budgets(budget, input_ids.shape[0])
        if not hasattr(self.policy, "pool"):  # a static Policy: no router pass to reuse
            return self.policy.decide(self, input_ids, attention_mask, budgets), None
        hidden, replay = self._router_pass(input_ids, attention_mask, position_ids)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        return self._route(hidden, mask, route_mask, route_from, budgets, mode), replay

    def _budgets(self, budget, batch: int):
        if self.policy is None:
            raise ValueError("no gates loaded: pass gates=DIR to l2a.load, or give decisions= explicitly")
        return as_budgets(budget, batch)

    def _route(self, hidden, mask, route_mask, route_from, budgets, mode) -> list[GateDecision]:
        """Decisions from the router layers' output (B, T, H): the router reads the rows' `route_mask`
        positions (default: the real tokens, `mask`) and row i takes row `route_from[i]`'s decision."""
        mask = route_mask if route_mask is not None else mask
        pooled = self.policy.pool(hidden, mask)  # (B, H)
        lengths = mask.sum(1)  # (B,) prompt tokens: the think head reads them
        if route_from is not None:  # rows that share a prompt share one decision, bit for bit
            pooled, lengths = pooled[route_from], lengths[route_from]
        return self.policy.decisions(pooled, budgets, mode=mode, lengths=lengths)

    def _plan_in_pass(self, input_ids, attention_mask, budget, mode, route_mask, route_from):
        """A plan that decides inside its own forward: the router layers run densely on every row, then
        their output decides the rest of the plan (`Plan.then`). One model call, the prompt run once."""
        budgets = self._budgets(budget, input_ids.shape[0])
        k = self.policy.config.router_layers
        plan, _ = self._router_plan(input_ids.shape[0])
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)

        def then(hidden):  # hidden: (B, T, H) after the router layers
            ds = self._route(hidden, mask, route_mask, route_from, budgets, mode)
            rest = self.plan(ds)
            if any(rest.parts[i] != plan.parts[i] for i in range(k)):  # the policy always keeps them whole
                raise RuntimeError("internal error: a decision drops or prunes a router layer")
            plan.parts[k:] = rest.parts[k:]
            plan.decisions = ds

        plan.then = then
        return plan

    def decide(self, input_ids, budget, attention_mask=None, mode: str = "threshold") -> list[GateDecision]:
        """One GateDecision per row for `budget` (a Budget, number, or one per row) from the loaded gates."""
        self._check_attached()
        return self._decide(input_ids, attention_mask, budget, mode, prefill_positions(attention_mask))[0]

    def _plan_for(self, input_ids, attention_mask, decisions, budget, mode, position_ids, **route):
        """(decisions, plan) from explicit decisions or a budget; a budget's router pass is replayed."""
        if budget is not None and decisions is not None:
            raise ValueError("give either decisions= or budget=, not both")
        if budget is None and any(v is not None for v in route.values()):
            raise ValueError("route_mask= and route_from= only apply with budget=")
        replay = None
        if budget is not None:
            ds, replay = self._decide(input_ids, attention_mask, budget, mode, position_ids, **route)
        else:
            ds = self._decisions(decisions, input_ids.shape[0])
        plan = self.plan(ds)
        plan.replay = replay
        return ds, plan

    # -- running -------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decisions: GateDecision | Sequence[GateDecision] | None = None,
        past_key_values: RowCache | None = None,
        use_cache: bool = False,
        budget=None,
        mode: str = "threshold",
        reuse: dict[int, torch.Tensor] | None = None,
        route_mask: torch.Tensor | None = None,
        route_from: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Logits (B, T, V) with each row running its decision (or the gates' decision for `budget`).

        With `use_cache`, fills a RowCache (pass it back to continue); `m.last_cache` holds it and
        `m.last_decisions` the decisions used. `reuse` {layer: output (B, T, H)} returns those outputs
        instead of running the layers: outputs of an earlier pass over the same inputs whose decisions
        agree up to there (a search that varies one layer resumes after the shared prefix).

        With `budget`, the router pass over these inputs is the start of this pass (no second pass over the
        prompt). `route_mask` (B, T) says which positions the router reads (a prompt followed by text to
        score: the prompt's), `route_from` (B,) which row's reading decides each row (rows that continue one
        prompt get one decision); the causal layers before the router see only the prompt there."""
        if budget is not None and decisions is not None:
            raise ValueError("give either decisions= or budget=, not both")
        if budget is not None and past_key_values is not None:
            raise ValueError("a budget is decided at prefill; continue a cache with its decisions")
        if reuse and (budget is not None or use_cache or past_key_values is not None):
            raise ValueError("reuse= needs explicit decisions and no cache")
        pos = kwargs.get("position_ids")
        hf_positions = pos is None and attention_mask is not None and not bool(attention_mask.all())
        in_pass = (budget is not None and not use_cache and past_key_values is None and not hf_positions
                   and hasattr(self.policy, "pool"))
        if in_pass:  # decided inside this pass, at this pass's positions (those `decide` uses)
            ds, plan = None, self._plan_in_pass(input_ids, attention_mask, budget, mode, route_mask, route_from)
        else:
            ds, plan = self._plan_for(input_ids, attention_mask, decisions, budget, mode,
                                      pos if pos is not None else prefill_positions(attention_mask),
                                      route_mask=route_mask, route_from=route_from)
        if hf_positions:
            plan.replay = None  # routed at generate's positions (as `decide`); this pass uses HF's defaults
        if reuse:
            plan.replay = {i: (h, None, None) for i, h in reuse.items()}
        cache = prepare(past_key_values, len(ds), tuple(ds)) if (use_cache or past_key_values is not None) else None
        with self._active(plan):
            out = self.hf(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=cache,
                use_cache=cache is not None,
                **kwargs,
            )
        self.last_cache, self.last_decisions = cache, ds if ds is not None else plan.decisions
        return out.logits

    __call__ = forward

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decisions: GateDecision | Sequence[GateDecision] | None = None,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        on_token: Callable[[torch.Tensor], None] | None = None,
        budget=None,
        mode: str = "threshold",
        thinking_token_budget: int | Sequence[int | None] | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """transformers `generate` with one decision per row; returns (B, T + new) token ids.

        Give `decisions` (one or one per row) or a `budget` (one or one per row) for the loaded gates,
        whose router pass is reused as the start of prefill. A row whose decision has `think_tokens`
        (the gates' allowance at b_think < 1), or whose `thinking_token_budget` (one int, or one per row,
        None = the decision's) is set, is budget-forced: at the allowance the answer marker
        (`self.answer_format`) is forced and a bounded answer follows (reasoning.py); the explicit
        budget wins. `on_token(tokens)` is called with each step's (B,) new tokens (streaming). Other
        keyword arguments (temperature, top_p, logits_processor, streamer, ...) go to HF `generate`.
        """
        if generate_kwargs.get("num_beams", 1) != 1:
            raise ValueError("beam search is not supported: decisions and KV are per row")
        position_ids = prefill_positions(attention_mask) if budget is not None else None
        ds, plan = self._plan_for(input_ids, attention_mask, decisions, budget, mode, position_ids)
        cache = RowCache(len(ds), tuple(ds))
        from .reasoning import add_forcing

        self.last_think = add_forcing(self, ds, thinking_token_budget, input_ids.shape[1], generate_kwargs)
        if on_token is not None:
            if "streamer" in generate_kwargs:
                raise ValueError("give either on_token or streamer, not both")
            generate_kwargs["streamer"] = _CallbackStreamer(on_token)
        if self.tokenizer is not None and "pad_token_id" not in generate_kwargs:
            generate_kwargs["pad_token_id"] = self.tokenizer.pad_token_id
        with self._active(plan):
            out = self.hf.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=cache,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                **generate_kwargs,
            )
        if plan.replay is not None:
            raise RuntimeError("internal error: the router pass was not replayed by the prefill")
        self.last_cache, self.last_decisions = cache, ds
        return out

    # -- training (masked reference) ---------------------------------------------------------------------

    def forward_with_hidden(self, input_ids, attention_mask=None, layer: int = 0, decisions=None):
        """(logits (B, T, V), hidden state after decoder `layer` (B, T, H)) in one pass, no cache."""
        plan = self.plan(self._decisions(decisions, input_ids.shape[0]))
        plan.capture = layer
        with self._active(plan):
            logits = self.hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return logits, plan.captured

    @contextmanager
    def soft(self, layer_gates: torch.Tensor, group_gates: torch.Tensor | None = None):
        """Within the block, `m.hf(...)` mixes every layer by `layer_gates` (B, L) and scales each KV-head
        group's attention output by `group_gates` (B, L, G): differentiable, computes everything."""
        self._check_attached()
        hooks = []
        if group_gates is not None:
            width = self.geometry.n_rep * self.geometry.head_dim  # o_proj input features per group
            for i, layer in enumerate(arch.decoder_layers(self.hf)):
                o_proj = getattr(getattr(layer.base_layer, self.spec.attn), self.spec.o)

                def scale(module, args, g=group_gates[:, i]):  # g: (B, G)
                    x = args[0]  # (B, T, nq*D)
                    return (x * g.repeat_interleave(width, -1)[:, None, :].to(x.dtype),)

                hooks.append(o_proj.register_forward_pre_hook(scale))
        try:
            with self._active(SoftPlan(layer_gates)):
                yield
        finally:
            for h in hooks:
                h.remove()
