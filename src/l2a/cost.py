"""CostModel: modeled FLOPs, parameter bytes and KV-cache bytes of a gated decoder-only model.

No torch here: the model is built from the HF config (object or dict) alone. It is what we *report* next
to measured cost (DESIGN decision 8); measured latency and memory live in `bench.py` (§6 style 8).

What is counted (FLOPs = 2 x multiply-accumulates, per token):
- per executed decoder layer keeping k of G KV-head groups (a group = one KV head and its nq/G query heads,
  DESIGN decision 6): q, k, v and o projections and attention (QK^T and AV, each 2*nq*D*ctx for `ctx` keys
  attended), all scaled by k/G; the gated SwiGLU MLP 3 * 2*H*F, unscaled.
- the LM head 2*H*V for every token whose logits are computed. The embedding lookup is 0 FLOPs.
- ignored: norms, rotary, activations, softmax, residual adds and biases (O(H) or O(ctx) per token, a few
  tenths of a percent at these sizes). Biases and norms *are* counted in `params`.
- attention is full causal attention (no sliding window); prefill counts the useful causal half, though a
  kernel may compute the masked half too.

What is not modeled: time. A scalar budget as a fraction of dense cost needs this model calibrated against
measured per-layer latency; that calibration lives with the benchmarks, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from l2a.decision import GateDecision


@dataclass(frozen=True)
class CostModel:
    """Sizes of a dense, gated-SwiGLU, GQA decoder-only model (Llama, Qwen2, Qwen3, SmolLM2)."""

    n_layers: int  # L: decoder layers (config.num_hidden_layers)
    hidden: int  # H: residual width (config.hidden_size)
    ffn: int  # F: MLP inner width (config.intermediate_size)
    n_heads: int  # nq: query heads (config.num_attention_heads)
    n_kv_heads: int  # nkv: KV heads = KV-head groups G (config.num_key_value_heads)
    head_dim: int  # D: per-head width (config.head_dim; Qwen3 sets it explicitly, else H // nq)
    vocab: int  # V: vocabulary size (config.vocab_size)
    tied: bool = False  # LM head shares the embedding matrix (config.tie_word_embeddings)
    qkv_bias: bool = False  # q/k/v projections have biases (Qwen2; Llama/Qwen3 attention_bias)
    o_bias: bool = False  # o projection has a bias (Llama/Qwen3 attention_bias)
    mlp_bias: bool = False  # MLP projections have biases (Llama mlp_bias)
    qk_norm: bool = False  # per-head RMSNorm on q and k, D weights each (Qwen3)
    dtype_bytes: int = 4  # bytes per stored element of weights and KV: 4 fp32, 2 bf16/fp16
    bridge_rank: int = 0  # a skipped layer runs a bridge (bridges.py) of this rank (0: none; >= H: full)

    def __post_init__(self):
        for name in ("n_layers", "hidden", "ffn", "n_heads", "n_kv_heads", "head_dim", "vocab", "dtype_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"CostModel.{name} must be a positive int, got {v!r}")
        _check_non_negative("CostModel.bridge_rank", self.bridge_rank)
        for name in ("tied", "qkv_bias", "o_bias", "mlp_bias", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"CostModel.{name} must be a bool, got {getattr(self, name)!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads}) for grouped-query attention"
            )

    @classmethod
    def from_config(cls, config, dtype_bytes: int = 4) -> "CostModel":
        """Build from a transformers config object or its dict (`config.to_dict()` / config.json)."""

        def get(key, default=None):
            if isinstance(config, dict):
                value = config.get(key, default)
            else:
                value = getattr(config, key, default)
            return default if value is None else value

        missing = [k for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
                   if get(k) is None]
        if missing:
            raise ValueError(f"config lacks {missing}; CostModel needs a decoder-only LM config (Llama, Qwen2, Qwen3)")
        n_heads = get("num_attention_heads")
        model_type = get("model_type", "")
        attention_bias = bool(get("attention_bias", False))
        return cls(
            n_layers=get("num_hidden_layers"),
            hidden=get("hidden_size"),
            ffn=get("intermediate_size"),
            n_heads=n_heads,
            n_kv_heads=get("num_key_value_heads", n_heads),
            head_dim=get("head_dim", get("hidden_size") // n_heads),
            vocab=get("vocab_size"),
            tied=bool(get("tie_word_embeddings", False)),
            # Qwen2 hard-codes q/k/v biases (no o bias) and has no attention_bias field.
            qkv_bias=attention_bias or model_type == "qwen2",
            o_bias=attention_bias,
            mlp_bias=bool(get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            dtype_bytes=dtype_bytes,
        )

    # -- shapes ---------------------------------------------------------------------------------------------

    @property
    def n_groups(self) -> int:
        """G: KV-head groups per layer (one KV head each)."""
        return self.n_kv_heads

    @property
    def heads_per_group(self) -> int:
        """nq / G: query heads that read one KV head."""
        return self.n_heads // self.n_kv_heads

    def _kept(self, decision) -> tuple[int, ...]:
        """(L,) kept groups per layer (0 = skipped), after checking the decision fits this model."""
        if decision is None:
            return (self.n_groups,) * self.n_layers
        if isinstance(decision, dict):
            decision = GateDecision.from_dict(decision)
        if not isinstance(decision, GateDecision):
            raise ValueError(f"decision must be a GateDecision, a dict or None (dense), got {type(decision).__name__}")
        decision.check_fits(self.n_layers, self.n_groups)
        return decision.kept_groups_per_layer(self.n_groups)

    def _terms(self, decision) -> tuple[int, int]:
        """Decoder-layer FLOPs of one token as (fixed, per_key): total = fixed + per_key * ctx."""
        H, D, qh = self.hidden, self.head_dim, self.heads_per_group
        # One group: q (H -> qh*D), k and v (H -> D each), o (qh*D -> H); QK^T and AV: 2*qh*D per key each.
        proj_group = 2 * H * qh * D + 2 * (2 * H * D) + 2 * qh * D * H
        attn_group = 2 * (2 * qh * D)
        mlp = 3 * 2 * H * self.ffn  # gate, up, down
        kept = self._kept(decision)
        fixed = sum(k * proj_group + mlp if k else 2 * self._bridge_params for k in kept)
        per_key = sum(k * attn_group for k in kept)
        return fixed, per_key

    @property
    def _bridge_params(self) -> int:
        """Parameters of one layer's bridge: H x H (or two H x r factors) and a bias; 0 without bridges."""
        H, r = self.hidden, self.bridge_rank
        return 0 if not r else (H * H if r >= H else 2 * H * r) + H

    @property
    def lm_head_flops(self) -> int:
        """FLOPs of the logits of one token (never shrinks)."""
        return 2 * self.hidden * self.vocab

    # -- FLOPs ----------------------------------------------------------------------------------------------

    def decode_flops(self, decision: GateDecision | None = None, context: int = 1) -> int:
        """FLOPs of one decode token attending `context` keys (the cache plus itself), logits included."""
        _check_positive("context", context)
        fixed, per_key = self._terms(decision)
        return fixed + per_key * context + self.lm_head_flops

    def prefill_flops(self, decision: GateDecision | None = None, prompt_len: int = 1, logits: str = "last") -> int:
        """FLOPs of a causal prefill of `prompt_len` tokens (token t attends t keys).

        logits="last" computes the LM head for the last position only (what `generate` does); "all" for
        every position (scoring, training).
        """
        _check_positive("prompt_len", prompt_len)
        if logits not in ("last", "all"):
            raise ValueError(f"logits must be 'last' or 'all', got {logits!r}")
        fixed, per_key = self._terms(decision)
        T = prompt_len
        head = self.lm_head_flops * (T if logits == "all" else 1)
        return fixed * T + per_key * (T * (T + 1) // 2) + head

    def generate_flops(self, decision: GateDecision | None, prompt_len: int, new_tokens: int) -> int:
        """FLOPs of `generate`: prefill (yields token 1) then new_tokens - 1 decode steps.

        The last generated token is never fed back, so decode step j (1-based) runs at context
        prompt_len + j, and the cache ends holding prompt_len + new_tokens - 1 tokens.
        """
        _check_positive("prompt_len", prompt_len)
        _check_positive("new_tokens", new_tokens)
        fixed, per_key = self._terms(decision)
        T, n = prompt_len, new_tokens - 1
        prefill = fixed * T + per_key * (T * (T + 1) // 2) + self.lm_head_flops
        keys = n * T + n * (n + 1) // 2  # sum of contexts T+1 .. T+n
        decode = (fixed + self.lm_head_flops) * n + per_key * keys
        return prefill + decode

    def layer_share(self, context: int = 1) -> float:
        """Share of dense decode FLOPs spent in decoder layers (the rest is the LM head).

        Skipping a fraction f of layers saves at most f * layer_share of the modeled FLOPs: why depth
        savings are sub-linear, most at small models with big vocabularies (SmolLM2: ~0.79 at context 1).
        """
        fixed, per_key = self._terms(None)
        layers = fixed + per_key * _check_positive("context", context)
        return layers / (layers + self.lm_head_flops)

    # -- bytes ----------------------------------------------------------------------------------------------

    def kv_bytes(self, decision: GateDecision | None = None, tokens: int = 1, batch: int = 1) -> int:
        """Bytes of K and V for `tokens` positions of `batch` rows sharing one decision.

        2 (K, V) x kept groups x head_dim x dtype_bytes x tokens, summed over executed layers: exactly what a
        cache holding only the executed layers and kept groups stores (one KV head per group).
        """
        _check_non_negative("tokens", tokens)
        _check_non_negative("batch", batch)
        groups = sum(self._kept(decision))
        return 2 * groups * self.head_dim * self.dtype_bytes * tokens * batch

    def batch_kv_bytes(self, decisions: Sequence[GateDecision | None], tokens: int | Sequence[int]) -> int:
        """KV bytes of a batch with one decision per row; `tokens` is shared or one count per row."""
        decisions = list(decisions)
        counts = [tokens] * len(decisions) if isinstance(tokens, int) else list(tokens)
        if len(counts) != len(decisions):
            raise ValueError(f"got {len(counts)} token counts for {len(decisions)} decisions: give one per row or one int")
        return sum(self.kv_bytes(d, t) for d, t in zip(decisions, counts))

    def params(self, decision: GateDecision | None = None) -> int:
        """Parameters the decision executes (what a pruned copy would hold), embeddings and LM head included.

        A `GatedModel` keeps every weight resident whatever the decision; use `params()` (dense) for it.
        """
        H, D, F, qh = self.hidden, self.head_dim, self.ffn, self.heads_per_group
        norms = 2 * H + (2 * D if self.qk_norm else 0)
        mlp = 3 * H * F + ((2 * F + H) if self.mlp_bias else 0)
        o_bias = H if self.o_bias else 0
        # One group: q rows (qh*D x H), k and v rows (D x H each), o columns (H x qh*D), with their biases.
        group = (qh * D * H) + 2 * (D * H) + (H * qh * D) + ((qh * D + 2 * D) if self.qkv_bias else 0)
        layers = sum(norms + mlp + o_bias + k * group if k else self._bridge_params for k in self._kept(decision))
        embed = self.vocab * H
        head = 0 if self.tied else self.vocab * H
        return embed + layers + H + head  # + final norm

    def param_bytes(self, decision: GateDecision | None = None) -> int:
        """`params(decision)` x dtype_bytes."""
        return self.params(decision) * self.dtype_bytes

    # -- report ---------------------------------------------------------------------------------------------

    def realized(self, decision: GateDecision | None, context: int = 512) -> dict:
        """Realized fractions of one decision (DESIGN decision 8), for JSON records.

        layers: decoder layers executed; groups: KV groups kept over executed layers; flops_fraction_decode:
        decode FLOPs vs dense at `context` keys (LM head included); kv_fraction: KV bytes vs dense.
        """
        kept = self._kept(decision)
        executed = [k for k in kept if k]
        return {
            "layers": len(executed) / self.n_layers,
            "groups": sum(executed) / (self.n_groups * len(executed)),
            "flops_fraction_decode": self.decode_flops(decision, context) / self.decode_flops(None, context),
            "kv_fraction": sum(kept) / (self.n_groups * self.n_layers),
        }


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_non_negative(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value
