"""Where Hugging Face keeps the decoder layers and attention projections, per architecture.

This is the only module that knows HF attribute paths. It answers three questions for a supported
`*ForCausalLM`: where the decoder layers are, what the attention geometry is (heads, KV heads, head_dim),
and how to slice an attention module down to a subset of KV-head groups (DESIGN decision 6). It does not
run models and holds no state.

A KV-head group g is KV head g plus the query heads that read it: query head h reads KV head h // n_rep
(n_rep = heads / kv_heads), so group g owns query heads [g*n_rep, (g+1)*n_rep). Pruning group g drops
its q_proj rows, k_proj/v_proj rows (and biases), and the matching o_proj input columns. Qwen3's q_norm /
k_norm normalise over head_dim and are shared by all heads, so they need no slicing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import skip_init


@dataclass(frozen=True)
class ArchSpec:
    """Attribute names of one architecture family."""

    model_type: str  # config.model_type
    layers: str = "model.layers"  # dotted path from the *ForCausalLM to the decoder ModuleList
    attn: str = "self_attn"  # attention submodule of a decoder layer
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"


# Registry: config.model_type -> ArchSpec. Errors list these names (DESIGN §6 rule 10).
ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama"),
    "qwen2": ArchSpec("qwen2"),
    "qwen3": ArchSpec("qwen3"),
    "mistral": ArchSpec("mistral"),
}


@dataclass(frozen=True)
class Geometry:
    """Attention geometry read from a config."""

    n_layers: int
    n_heads: int  # query heads
    n_kv: int  # KV heads = KV-head groups
    head_dim: int

    @property
    def n_rep(self) -> int:  # query heads per group
        return self.n_heads // self.n_kv


def spec_for(model_or_config) -> ArchSpec:
    """The ArchSpec of a model or config, or a ValueError listing the supported architectures."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise ValueError(
            f"unsupported architecture {model_type!r}; l2a supports: {', '.join(sorted(ARCHS))}. "
            "Add an ArchSpec to l2a.arch.ARCHS if its decoder layers and attention look like Llama's."
        )
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        raise ValueError(
            f"{model_type} config uses layer types {sorted(set(layer_types))}; l2a supports full attention only "
            "(sliding-window layers are not supported yet)"
        )
    return ARCHS[model_type]


def geometry(config) -> Geometry:
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return Geometry(config.num_hidden_layers, n_heads, n_kv, head_dim)


def _get(obj, dotted: str):
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder layers of a supported *ForCausalLM."""
    return _get(model, spec_for(model).layers)


def decoder_owner(model: nn.Module) -> tuple[nn.Module, str]:
    """(module holding the decoder ModuleList, attribute name), for replacing the list."""
    path = spec_for(model).layers.split(".")
    return _get(model, ".".join(path[:-1])) if len(path) > 1 else model, path[-1]


def shallow_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` that shares parameters and buffers but owns its submodule table.

    Assigning a submodule on the copy leaves the original untouched (copy.copy alone would share
    `_modules` and mutate both).
    """
    new = copy.copy(module)
    new._modules = dict(module._modules)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    return new


def _slice_linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = lin.weight  # (out, in)
    if rows is not None:
        w = w.index_select(0, rows)
    if cols is not None:
        w = w.index_select(1, cols)
    bias = lin.bias
    if bias is not None and rows is not None:
        bias = bias.index_select(0, rows)
    # skip_init: no random init (it would waste time and consume the global RNG that sampling uses)
    new = skip_init(nn.Linear, w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
    new.weight = nn.Parameter(w.detach().contiguous(), requires_grad=False)
    if bias is not None:
        new.bias = nn.Parameter(bias.detach().contiguous(), requires_grad=False)
    return new


def group_indices(geo: Geometry, keep: tuple[int, ...], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature indices of the kept groups: (q/o features (k*n_rep*D,), k/v features (k*D,))."""
    d, r = geo.head_dim, geo.n_rep
    q_heads = [g * r + j for g in keep for j in range(r)]
    q_idx = torch.tensor([h * d + i for h in q_heads for i in range(d)], dtype=torch.long, device=device)
    kv_idx = torch.tensor([g * d + i for g in keep for i in range(d)], dtype=torch.long, device=device)
    return q_idx, kv_idx


def slice_attention(attn: nn.Module, spec: ArchSpec, geo: Geometry, keep: tuple[int, ...]) -> nn.Module:
    """A copy of `attn` that computes only KV-head groups `keep` (weights physically sliced, not masked).

    The copy owns new (smaller) projection weights; everything else (rotary, norms, config) is shared.
    Head counts are inferred from the weights by HF's forward (`view(..., -1, head_dim)`), and n_rep is
    unchanged because whole groups are kept, so no attribute needs rewriting.
    """
    if not keep or len(set(keep)) != len(keep) or not all(0 <= g < geo.n_kv for g in keep):
        raise ValueError(f"kept groups must be distinct indices in [0, {geo.n_kv}), got {keep}")
    device = getattr(attn, spec.q).weight.device
    q_idx, kv_idx = group_indices(geo, tuple(sorted(keep)), device)
    new = shallow_copy(attn)
    setattr(new, spec.q, _slice_linear(getattr(attn, spec.q), rows=q_idx))
    setattr(new, spec.k, _slice_linear(getattr(attn, spec.k), rows=kv_idx))
    setattr(new, spec.v, _slice_linear(getattr(attn, spec.v), rows=kv_idx))
    setattr(new, spec.o, _slice_linear(getattr(attn, spec.o), cols=q_idx))
    return new


def with_attention(layer: nn.Module, spec: ArchSpec, attn: nn.Module) -> nn.Module:
    """A shallow copy of decoder `layer` whose attention submodule is `attn` (MLP and norms shared)."""
    new = shallow_copy(layer)
    setattr(new, spec.attn, attn)
    return new
