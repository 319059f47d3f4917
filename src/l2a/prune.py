"""Physically prune a transformers model to one GateDecision: the static model a decision stands for.

Skipped layers are deleted from the ModuleList and pruned KV-head groups are sliced out of the weights,
so the result is a plain transformers model with a plain `DynamicCache`. It is the speed limit of a
decision in `l2a bench` and a static baseline's deployable form. Unpruned weights are shared with the
source model (no copy); pruned attention projections are new, smaller tensors. Not for training.
"""

from __future__ import annotations

import copy

from torch import nn

from . import arch
from .decision import GateDecision


def prune_model(model: nn.Module, decision: GateDecision) -> nn.Module:
    """A new transformers model that runs only `decision`'s layers and groups (weights shared)."""
    spec = arch.spec_for(model)
    geo = arch.geometry(model.config)
    decision.check_fits(geo.n_layers, geo.n_kv)
    layers = arch.decoder_layers(model)
    if any(not hasattr(layer, spec.attn) for layer in layers):
        raise ValueError("prune_model needs a plain transformers model; detach() the GatedModel first")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = sum(decision.layers)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [t for t, keep in zip(config.layer_types, decision.layers) if keep]

    kept = []
    for new_idx, i in enumerate(decision.kept_layers):
        attn = getattr(layers[i], spec.attn)
        groups = decision.groups(i)
        # A copy in every case: the KV cache is indexed by `layer_idx`, which changes when layers go.
        attn = arch.slice_attention(attn, spec, geo, groups) if groups is not None else arch.shallow_copy(attn)
        attn.layer_idx = new_idx
        kept.append(arch.with_attention(layers[i], spec, attn))

    pruned = arch.shallow_copy(model)
    pruned.config = config
    owner, name = arch.decoder_owner(model)
    if owner is model:
        setattr(pruned, name, nn.ModuleList(kept))
    else:
        # Rebuild the chain of shallow copies from the top model down to the layers' owner.
        path = spec.layers.split(".")[:-1]
        parent, src = pruned, model
        for attr in path:
            child = arch.shallow_copy(getattr(src, attr))
            if hasattr(child, "config"):
                child.config = config
            setattr(parent, attr, child)
            parent, src = child, getattr(src, attr)
        setattr(parent, name, nn.ModuleList(kept))
    return pruned
