"""static: calibrated static baselines (Block Influence, angular distance, static KV-group importance).

One dense forward over calibration text (default: the first 64 GSM8K train items, question + worked
answer) yields three scores per model, computed with forward hooks on the decoder layers' `base_layer`
(with no plan active the GatedModel's wrappers are transparent, and hooks see the pre-norm residual
stream, which `output_hidden_states` does not give for the last layer):

- Block Influence (ShortGPT, Men et al. 2024): BI_l = 1 - mean over tokens of cos(h_l, h_{l+1}), h_l the
  residual stream entering layer l; the lowest-BI layers are removed.
- angular distance (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"):
  d(h_i, h_j) = arccos(cos(h_i, h_j)) / pi at each sequence's last token, averaged over sequences; the
  contiguous block of n layers with the smallest d(h_l, h_{l+n}) is removed.
- KV-group importance: mean over tokens of the L2 norm of each group's contribution to the attention output,
  o_proj restricted to the group's input columns applied to their slice (DESIGN decision 6).

`swap.greedy_kl_order` ranks layers by greedy removal under teacher-forced KL to the dense model (a search,
not a score: minutes, not one forward; SLEB, Song et al. 2024, removes blocks greedily by perplexity alike);
training uses it as a warm start (`l2a train --warm-start greedy-kl`), and the `greedy-kl` baseline removes
layers in its order: the static set L2A's gates start from, searched on the calibration set's first
GREEDY_PAIRS items (chat prompt + worked answer, as training's search sees them; `Calibration.search` sets
another count). `Calibration.mc` adds multiple-choice (question, correct choice) pairs to every
calibration (`l2a eval --calib-mc FILE ...`). `greedy-swap` refines greedy-kl's set at each budget (swap.py);
`block-swap` may start the refinement from a block start instead.

Scores are cached per (model, Calibration). The selection rules are pure functions in `baselines.py`.
This module does not evaluate anything and does not train.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import arch, data
from .baselines import _StaticPolicy, drop_block, even_spaced, keep_most_important, kept_count, top_groups
from .decision import GateDecision


@dataclass(frozen=True)
class Calibration:
    """Which text calibrates the static baselines."""

    path: str | None = None  # math JSONL (question + answer); None = gsm8k/train.jsonl under a data root
    mc: tuple[str, ...] = ()  # MC files whose (question, correct choice) pairs join that text, in mix.py's
    #   seed-0 order (the data `l2a train --mix-mc` trains on: a static baseline with the same data access)
    n: int = 64  # the first n items (of each source)
    search: int | None = None  # greedy-kl: the first `search` GSM8K items are searched on (None: min(n, GREEDY_PAIRS))
    mc_search: int | None = None  # greedy-kl: how many of mc's pairs join its searched items (None: as many as
    #   the GSM8K items searched); MC answers are ~3 tokens against GSM8K's ~100
    max_tokens: int = 256  # each text truncated to this many tokens
    batch_size: int = 8  # sequences per calibration forward

    def __post_init__(self):
        object.__setattr__(self, "mc", tuple(str(p) for p in self.mc))  # hashable, as lists read back from JSON
        optional = tuple(k for k in ("search", "mc_search") if getattr(self, k) is not None)
        for name in ("n", "max_tokens", "batch_size", *optional):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Calibration.{name} must be a positive int, got {v!r}")


@dataclass
class CalibStats:
    """Calibration scores of one model."""

    bi: list[float]  # (L,) Block Influence per layer
    angular: list[list[float]]  # (L+1, L+1) angular distance between residual streams entering layers i, j
    groups: list[list[float]]  # (L, G) mean L2 norm of each KV-head group's attention-output contribution
    tokens: int  # calibration tokens (non-pad)
    source: str  # where the text came from (data loader source) or "ids"


# ---- pure scores from a hidden-state sequence ---------------------------------------------------------


def block_influence(hs: torch.Tensor) -> torch.Tensor:
    """(L,) BI_l = 1 - mean_n cos(hs[l, n], hs[l+1, n]) from hs (L+1, N, H): residual streams per layer."""
    return 1.0 - F.cosine_similarity(hs[:-1].double(), hs[1:].double(), dim=-1).mean(-1)


def angular_distance(hs: torch.Tensor) -> torch.Tensor:
    """(L+1, L+1) mean_n arccos(cos(hs[i, n], hs[j, n])) / pi from hs (L+1, N, H)."""
    u = F.normalize(hs.double(), dim=-1)  # (L+1, N, H)
    cos = torch.einsum("inh,jnh->ijn", u, u).clamp(-1.0, 1.0)  # (L+1, L+1, N)
    return torch.arccos(cos).mean(-1) / math.pi


# ---- calibration forward ------------------------------------------------------------------------------


@torch.inference_mode()
def calibrate(model, sequences: list[list[int]], batch_size: int = 8, pad_id: int = 0, source: str = "ids") -> CalibStats:
    """Scores from one dense pass over token-id `sequences` (left-padded batches; pads never counted)."""
    from .gated import prefill_positions
    from .scoring import left_pad

    if getattr(model, "_runtime", None) is not None and model._runtime.plan is not None:
        raise RuntimeError("calibrate() needs the GatedModel idle (no forward or generate running)")
    layers = arch.decoder_layers(model.hf)
    spec, geo = model.spec, model.geometry
    L, G, r, D = geo.n_layers, geo.n_kv, geo.n_rep, geo.head_dim
    cos_sum = torch.zeros(L, dtype=torch.float64)
    grp_sum = torch.zeros(L, G, dtype=torch.float64)
    last: list[list[torch.Tensor]] = [[] for _ in range(L + 1)]  # residual stream at each row's last token
    state: dict = {}

    def layer_hook(i):
        def hook(module, args, kwargs, out):
            h_in = args[0] if args else kwargs["hidden_states"]  # (B, T, H)
            h_out = out[0] if isinstance(out, tuple) else out  # (B, T, H)
            cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)  # (B, T)
            cos_sum[i] += cos[state["mask"]].double().sum()
            if i == 0:
                last[0].append(h_in[:, -1].float())  # (B, H): left padding puts every row's last token at T-1
            last[i + 1].append(h_out[:, -1].float())

        return hook

    def o_hook(i, o_proj):
        H = o_proj.weight.shape[0]
        w = o_proj.weight.float().view(H, G, r * D)  # (H, G, r*D): o_proj input columns by group

        def hook(module, args):
            x = args[0].float()  # (B, T, nq*D)
            B, T = x.shape[:2]
            y = torch.einsum("btgd,hgd->btgh", x.view(B, T, G, r * D), w)  # (B, T, G, H) per-group contribution
            grp_sum[i] += y.norm(dim=-1)[state["mask"]].double().sum(0)  # (G,)

        return hook

    handles = []
    try:
        for i, wrapper in enumerate(layers):
            base = getattr(wrapper, "base_layer", wrapper)
            handles.append(base.register_forward_hook(layer_hook(i), with_kwargs=True))
            o_proj = getattr(getattr(base, spec.attn), spec.o)
            handles.append(o_proj.register_forward_pre_hook(o_hook(i, o_proj)))
        n_tok = 0
        for start in range(0, len(sequences), batch_size):
            ids, mask = left_pad(sequences[start:start + batch_size], pad_id, model.device)  # (B, T)
            state["mask"] = mask.bool()
            n_tok += int(mask.sum())
            model.hf(input_ids=ids, attention_mask=mask, position_ids=prefill_positions(mask), use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    if n_tok == 0:
        raise ValueError("calibration needs at least one token")
    hs_last = torch.stack([torch.cat(x) for x in last])  # (L+1, N, H)
    return CalibStats(
        bi=(1.0 - cos_sum / n_tok).tolist(),
        angular=angular_distance(hs_last).tolist(),
        groups=(grp_sum / n_tok).tolist(),
        tokens=n_tok,
        source=source,
    )


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model.hf -> {Calibration: CalibStats}


def _tokenizer(model):
    """(tokenizer, pad id) of a model the calibrated baselines read text for."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError("calibrated baselines need the model's tokenizer (GatedModel(hf, tokenizer=...))")
    return tok, tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def stats_for(model, cal: Calibration) -> CalibStats:
    """Calibration scores of `model` on `cal`'s text, computed once per (model, Calibration)."""
    per_model = _CACHE.setdefault(model.hf, {})
    if cal not in per_model:
        seqs, pad, source = calibration_sequences(model, cal)
        per_model[cal] = calibrate(model, seqs, cal.batch_size, pad, source)
    return per_model[cal]


def calibration_sequences(model, cal: Calibration, mc_pairs: int | None = None) -> tuple[list[list[int]], int, str]:
    """(token ids of `cal`'s texts, pad id, the math data's source): the first n GSM8K train chains and
    n MC pairs (or `mc_pairs` of them), each cut at max_tokens."""
    tok, pad = _tokenizer(model)
    rows, source = data.load_math(cal.path, split="train")
    texts = [f"{r['question']}\n{r['answer']}" for r in rows[: cal.n]]
    seqs = [list(tok(t)["input_ids"])[: cal.max_tokens] for t in texts]
    seqs += [(p + a)[: cal.max_tokens] for p, a in _mc_pairs(tok, cal, mc_pairs or cal.n)]
    return seqs, pad, source


# ---- policies -------------------------------------------------------------------------------------------


GREEDY_PAIRS = 16  # greedy-kl baseline: calibration items searched on (SmolLM2, 2 cores: 161 s)
GREEDY_MAX_LEN = 160  # their tokens, prompt included (training's default search pairs are cut alike)
GREEDY_FLOOR = 0.4  # searched down to this fraction of the layers; the rest follow in the last step's KL order
_ORDERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model.hf -> {Calibration: order}


def greedy_order_for(model, cal: Calibration, progress: bool = True) -> list[int]:
    """The greedy-KL removal order (least important first) of layers 1..L-2 of `model` on `cal`'s first
    GREEDY_PAIRS items (or `cal.search`): searched once per (model, Calibration) and kept on disk, keyed by
    the model's parameters and dtype and by the searched token ids, so a later run reads it back."""
    from .swap import greedy_kl_order

    per_model = _ORDERS.setdefault(model.hf, {})
    mine = (cal, _bridges_id(model))
    if mine not in per_model:
        pairs, pad, key = _search(model, cal)
        L = model.n_layers
        per_model[mine] = _on_disk("greedy-kl", key, lambda: {"order": greedy_kl_order(
            model, pairs, list(range(1, L - 1)), _greedy_steps(L), pad_id=pad, progress=progress)})["order"]
    return per_model[mine]


def swapped_set_for(model, cal: Calibration, removals: int, blocks: bool = False, progress: bool = True) -> dict:
    """The greedy order's first `removals` layers (or, with `blocks`, the better of those and the best block
    start) refined by swap.swap_refine on the same pairs (swap.refine): searched once per (model, Calibration,
    removals, blocks) and kept on disk like the order ({"removed", "kl", ...})."""
    from .swap import SetKL, refine

    per_model = _ORDERS.setdefault(model.hf, {})
    mine = (cal, removals, blocks, _bridges_id(model))
    if mine not in per_model:
        order = greedy_order_for(model, cal, progress)
        pairs, pad, key = _search(model, cal)
        search = lambda: refine(SetKL(model, pairs, pad), order, removals, order, blocks, progress)  # noqa: E731
        per_model[mine] = _on_disk("block-swap" if blocks else "greedy-swap", f"{key}-{removals}", search)
    return per_model[mine]


def _bridges_id(model) -> str | None:
    """The digest of the bridges skipped layers run (a search under bridges is another search), or None."""
    bridges = getattr(model, "bridges", None)
    return None if bridges is None else bridges.digest()


def _search(model, cal: Calibration) -> tuple[list, int, str]:
    """(pairs, pad id, cache key) of the greedy search on `cal`: its first GSM8K items (chat prompt + worked
    answer) and MC pairs, each cut to GREEDY_MAX_LEN tokens, prompt first."""
    from .tasks import math_prompt, solution_ids

    tok, pad = _tokenizer(model)
    rows, _ = data.load_math(cal.path, split="train")
    k = cal.search or min(cal.n, GREEDY_PAIRS)
    whole = [(math_prompt(tok, r["question"]), solution_ids(tok, r["answer"])) for r in rows[:k]]
    pairs = []
    for prompt, answer in whole + _mc_pairs(tok, cal, cal.mc_search or k):
        prompt = prompt[: GREEDY_MAX_LEN - 1]
        pairs.append((prompt, answer[: GREEDY_MAX_LEN - len(prompt)]))
    L = model.n_layers
    bridged = [] if _bridges_id(model) is None else [_bridges_id(model)]  # plain searches keep their old keys
    key = hashlib.sha256(json.dumps([_fingerprint(model), pairs, list(range(1, L - 1)), _greedy_steps(L), pad, *bridged])
                         .encode())
    return pairs, pad, key.hexdigest()


def _greedy_steps(L: int) -> int:
    """Greedy removals searched: down to GREEDY_FLOOR of the L layers (at least 2 kept)."""
    return max(0, L - max(2, math.ceil(GREEDY_FLOOR * L)))


def _on_disk(kind: str, key: str, compute) -> dict:
    """compute() (a JSON-able dict), kept in the order cache as `kind`-<key>.json and read back from there."""
    path = _order_cache() / f"{kind}-{key[:32]}{key[64:]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    found = {**compute(), "key": key}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(found) + "\n")
    tmp.replace(path)
    return found


def _mc_pairs(tok, cal: Calibration, n: int) -> list[tuple[list[int], list[int]]]:
    """The first n (decision prompt, rest of the correct choice) pairs of cal.mc, in mix.py's seed-0 order."""
    if not cal.mc:
        return []
    from .mix import ordered

    return ordered(tok, 0, cal.mc)[:n]


def _order_cache() -> Path:
    """Where searched orders are kept between runs: `static/` in the l2a cache root."""
    from .modelcache import cache_root

    return cache_root().parent / "static" if not os.environ.get("L2A_CACHE") else cache_root() / "static"


def _fingerprint(model) -> str:
    """A cache key for the model as it runs: every parameter's name, shape, dtype and 64 of its values
    spread over it (not a checksum of every weight: enough to tell models and dtypes apart)."""
    h = hashlib.sha256()
    for name, p in model.hf.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(flat[_spread(flat.numel())].float().cpu().numpy().tobytes())
    return h.hexdigest()


def _spread(n: int, k: int = 64) -> torch.Tensor:
    """(min(k, n),) distinct indices spread over range(n), first and last included (integer arithmetic:
    float steps round past the end on tensors of tens of millions of elements)."""
    k = min(k, n)
    return torch.arange(k) * (n - 1) // max(1, k - 1)


class _Calibrated(_StaticPolicy):
    def __init__(self, calibration: Calibration | None = None):
        super().__init__()
        self.calibration = calibration or Calibration()

    def prepare(self, model, budget=None) -> CalibStats:
        """Run (or fetch) the calibration now, so the evaluator can keep it out of measured time."""
        return stats_for(model, self.calibration)

    def _with_groups(self, model, budget, layers: GateDecision) -> GateDecision:
        if kept_count(model.n_groups, budget.heads) == model.n_groups:
            return layers
        return top_groups(self.prepare(model).groups, model.n_groups, budget.heads, layers)


class BlockInfluencePolicy(_Calibrated):
    """ShortGPT: remove the lowest-BI layers (first and last kept); groups by calibrated importance."""

    name = "block-influence"

    def decision(self, model, budget) -> GateDecision:
        layers = keep_most_important(self.prepare(model).bi, model.n_layers, budget.layers)
        return self._with_groups(model, budget, layers)


class AngularPolicy(_Calibrated):
    """Gromov et al.: remove the contiguous block with the smallest angular distance; groups by importance."""

    name = "angular"

    def decision(self, model, budget) -> GateDecision:
        layers = drop_block(self.prepare(model).angular, model.n_layers, budget.layers)
        return self._with_groups(model, budget, layers)


class GreedyKLPolicy(_Calibrated):
    """Remove layers in greedy-KL order (first and last kept; the static set L2A's warm start is);
    groups by calibrated importance."""

    name = "greedy-kl"

    def prepare(self, model, budget=None) -> CalibStats:
        greedy_order_for(model, self.calibration)
        return super().prepare(model)

    def decision(self, model, budget) -> GateDecision:
        order = greedy_order_for(model, self.calibration)
        rank = {j: i for i, j in enumerate(order)}  # later removal = more important
        importance = [rank.get(i, len(order)) for i in range(model.n_layers)]
        layers = keep_most_important(importance, model.n_layers, budget.layers)
        return self._with_groups(model, budget, layers)


class GreedySwapPolicy(_Calibrated):
    """Remove the greedy-KL set of each budget refined by single-layer swaps under the same KL (swap.py):
    a set per budget, not nested across budgets; groups by calibrated importance."""

    name = "greedy-swap"
    blocks = False  # block-swap: the swaps may start from the best block start instead (swap.block_start)

    def prepare(self, model, budget=None) -> CalibStats:
        if budget is not None:  # the per-budget search runs here, out of measured time
            self._removed(model, budget)
        return super().prepare(model)

    def decision(self, model, budget) -> GateDecision:
        return self._with_groups(model, budget, GateDecision.dropping(model.n_layers, self._removed(model, budget)))

    def _removed(self, model, budget) -> list[int]:
        L = model.n_layers
        return swapped_set_for(model, self.calibration, L - kept_count(L, budget.layers), self.blocks)["removed"]


class BlockSwapPolicy(GreedySwapPolicy):
    """greedy-swap whose swaps start from the better of greedy's set and the best greedy-head-plus-block set."""

    name = "block-swap"
    blocks = True


class StaticGroupsPolicy(_Calibrated):
    """Static KV-group pruning by importance, per layer; layers even-spaced when b.layers < 1."""

    name = "static-groups"

    def decision(self, model, budget) -> GateDecision:
        layers = even_spaced(model.n_layers, budget.layers)
        return self._with_groups(model, budget, layers)
