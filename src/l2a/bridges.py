"""Bridges: what a row that skips a decoder layer runs instead of nothing, a linear map of its residual stream.

A decoder layer adds `f(h)` to the residual stream `h`; skipping it drops `f(h)`. A bridge replaces the
dropped update by its best linear prediction, `h + h @ W + b`, fit in closed form (ridge regression) on the
dense model's own hidden states over the static baselines' calibration text: no gradient training, no
labels, the base weights untouched, seconds to fit. Each row's first token is left out of the fit: it is
the attention sink, whose activations are orders of magnitude larger and would dominate the least squares.
With `rank` r the map is truncated to its best rank-r approximation (SVD), stored as two factors.

A bridge costs 2·H² FLOPs a token (full rank; 4·H·r at rank r), against about 2·(4·H² + 3·H·F) for a
SmolLM2 layer (~9% at full rank, ~2% at r = 64), holds no KV cache, and is counted by the cost model
(`CostModel.bridge_rank`). Bridges belong to a base model, not to a policy: every method (static or learned)
can run with them, so they are compared method against method. Budget 1.0 runs no bridge: bit-identical.

Artifact: `l2a_bridges.json` (config, base model identity) + `l2a_bridges.safetensors` (per layer: `w` (L, H, H)
or factors `u` (L, H, r), `v` (L, r, H); `b` (L, H)). Loading onto another base model is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import arch
from .bridge_tune import TuneConfig
from .static import Calibration

CONFIG_NAME = "l2a_bridges.json"
WEIGHTS_NAME = "l2a_bridges.safetensors"
FORMAT = 1


@dataclass(frozen=True)
class BridgeConfig:
    """How bridges are fit."""

    calibration: Calibration = Calibration()  # the text: the static baselines' calibration (same data access)
    ridge: float = 1e-3  # Tikhonov weight, relative to the mean diagonal of XᵀX (scale-free)
    rank: int | None = None  # keep the best rank-r approximation of each map (None: full rank)
    mc_pairs: int | None = None  # MC pairs of calibration.mc fit on (None: calibration.n, as the static baselines)
    tune: TuneConfig | None = None  # how the ridge maps were then tuned end to end (bridge_tune.py; None: not)

    def __post_init__(self):
        if isinstance(self.calibration, dict):  # read back from JSON
            object.__setattr__(self, "calibration", Calibration(**self.calibration))
        if isinstance(self.tune, dict):
            object.__setattr__(self, "tune", TuneConfig(**self.tune))
        if isinstance(self.ridge, bool) or not isinstance(self.ridge, (int, float)) or not self.ridge > 0:
            raise ValueError(f"BridgeConfig.ridge must be a positive number, got {self.ridge!r}")
        for name in ("rank", "mc_pairs"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"BridgeConfig.{name} must be a positive int or None, got {v!r}")


class Bridges(nn.Module):
    """One linear map per decoder layer: `bridge(i, h) = h + h @ W_i + b_i`, W_i = u_i @ v_i at low rank."""

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor, u: torch.Tensor | None = None,
                 v: torch.Tensor | None = None, config: BridgeConfig | None = None, base: dict | None = None):
        super().__init__()
        if (weight is None) == (u is None or v is None):
            raise ValueError("give either the full maps (weight) or both low-rank factors (u, v)")
        self.register_buffer("b", bias)  # (L, H)
        self.register_buffer("w", weight)  # (L, H, H) or None
        self.register_buffer("u", u)  # (L, H, r) or None
        self.register_buffer("v", v)  # (L, r, H) or None
        self.config = config or BridgeConfig()
        self.base = base  # checkpoint.base_identity of the model they were fit on
        self.fit: dict = {}  # how the fit went: calibration tokens, R² of each layer's map (fit_bridges)
        self._digest = None  # the maps are not changed after construction

    @property
    def n_layers(self) -> int:
        return self.b.shape[0]

    @property
    def hidden(self) -> int:
        return self.b.shape[1]

    @property
    def rank(self) -> int:
        """The map's rank as the cost model counts it (H at full rank)."""
        return self.u.shape[2] if self.u is not None else self.hidden

    def forward(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, H) -> h + its predicted update in `layer` (B, T, H), in h's dtype."""
        x = h.to(self.b.dtype)
        delta = x @ self.w[layer] if self.w is not None else (x @ self.u[layer]) @ self.v[layer]
        return h + (delta + self.b[layer]).to(h.dtype)

    def digest(self) -> str:
        """16 hex digits identifying these maps bit for bit (and how they were fit); computed once."""
        if self._digest is None:
            cfg = dataclasses.asdict(self.config)
            for late in ("mc_pairs", "tune"):  # fields that came later: bridges fit without them keep their digest
                if cfg[late] is None:
                    del cfg[late]
            h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
            for name, t in sorted(self.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
            self._digest = h.hexdigest()[:16]
        return self._digest

    def describe(self) -> dict:
        """What an eval line records about the bridges it ran with."""
        tune = self.config.tune
        return {"digest": self.digest(), "rank": self.rank, "ridge": self.config.ridge,
                "calibration": dataclasses.asdict(self.config.calibration), "mc_pairs": self.config.mc_pairs,
                **({"tune": {"methods": list(tune.methods), "budgets": list(tune.budgets), "steps": tune.steps,
                             "selected_step": self.fit.get("tune", {}).get("selected_step")}} if tune else {})}


def check_line(line: dict, bridges: Bridges | None, out) -> None:
    """A finished eval line is reused only under the bridges that wrote it ("+bridges" lines)."""
    if bridges is not None and line["method"] != "dense" and line.get("bridges", {}).get("digest") != bridges.digest():
        raise ValueError(f"{out}: its {line['method']!r} line was made with other bridges "
                         f"({line.get('bridges', {}).get('digest')}, these are {bridges.digest()}); "
                         "write to another --results file")


def check_policy(policy, bridges: Bridges | None, what: str) -> None:
    """Gates trained with bridges (`l2a train --bridges`) run only with those bridges: their layer choices
    assume them. Gates trained without bridges may run with any (the comparison bridges.sh measures)."""
    want = getattr(policy, "trained_bridges", None)
    if want is not None and (bridges is None or bridges.digest() != want):
        have = "none" if bridges is None else bridges.digest()
        raise ValueError(f"{what}: the gates were trained with bridges {want} and would run with {have}; pass "
                         "--bridges DIR of the bridges they were trained with (their training record names it)")


# ---- fitting ---------------------------------------------------------------------------------------------


@torch.no_grad()
def fit_bridges(model, config: BridgeConfig = BridgeConfig(), progress: bool = True) -> Bridges:
    """Fit every layer's bridge on `model`'s dense hidden states over `config.calibration`'s text."""
    from .checkpoint import base_identity
    from .gated import prefill_positions
    from .scoring import left_pad
    from .static import calibration_sequences

    if model._runtime.plan is not None:
        raise RuntimeError("fit_bridges() needs the GatedModel idle (no forward or generate running)")
    seqs, pad, _ = calibration_sequences(model, config.calibration, config.mc_pairs)
    layers = arch.decoder_layers(model.hf)
    L, H = len(layers), model.hf.config.hidden_size
    xtx = torch.zeros(L, H + 1, H + 1, dtype=torch.float64)  # Σ [h, 1]ᵀ [h, 1] per layer
    xty = torch.zeros(L, H + 1, H, dtype=torch.float64)  # Σ [h, 1]ᵀ f(h) per layer
    yy = torch.zeros(L, H, dtype=torch.float64)  # Σ f(h)² per layer and feature: the fit's R²
    state: dict = {}

    def hook(i):
        def f(module, args, kwargs, out):
            h = (args[0] if args else kwargs["hidden_states"])[state["fit"]].double()  # (N, H) fit tokens
            y = (out[0] if isinstance(out, tuple) else out)[state["fit"]].double() - h  # (N, H) the update
            x = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)  # (N, H+1)
            xtx[i] += x.T @ x
            xty[i] += x.T @ y
            yy[i] += (y * y).sum(0)

        return f

    handles = [getattr(layer, "base_layer", layer).register_forward_hook(hook(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    bs = config.calibration.batch_size
    try:
        from tqdm.auto import tqdm

        for start in tqdm(range(0, len(seqs), bs), desc="fit bridges", unit="batch", disable=not progress, leave=False):
            ids, mask = left_pad(seqs[start:start + bs], pad, model.device)  # (B, T)
            first = mask.long().cumsum(1) == 1  # (B, T) each row's first real token: the attention sink
            state["fit"] = mask.bool() & ~first
            model.hf(input_ids=ids, attention_mask=mask, position_ids=prefill_positions(mask), use_cache=False,
                     logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    if not xtx[0, H, H] > H:
        raise ValueError(f"fitting bridges needs more than {H} calibration tokens, got {int(xtx[0, H, H])}")
    ridge = config.ridge * xtx.diagonal(dim1=1, dim2=2).mean(1)  # (L,)
    eye = torch.eye(H + 1, dtype=torch.float64)
    sol = torch.linalg.solve(xtx + ridge[:, None, None] * eye, xty)  # (L, H+1, H)
    u = v = None
    if config.rank is not None and config.rank < H:
        U, S, Vh = torch.linalg.svd(sol[:, :H], full_matrices=False)  # (L, H, H), (L, H), (L, H, H)
        r = config.rank
        u, v = U[:, :, :r] * S[:, None, :r], Vh[:, :r]  # (L, H, r), (L, r, H)
        sol = torch.cat([u @ v, sol[:, H:]], 1)  # the map as truncated, for its R²
    n = xtx[0, H, H]
    sse = yy.sum(1) - 2 * (sol * xty).sum((1, 2)) + (sol * (xtx @ sol)).sum((1, 2))  # (L,) Σ‖f - [h,1]W‖²
    sst = yy.sum(1) - (xty[:, H] ** 2).sum(1) / n  # (L,) Σ‖f - mean f‖²
    bridges = Bridges(None if u is not None else sol[:, :H].float(), sol[:, H].float(),
                      None if u is None else u.float(), None if v is None else v.float(), config, base_identity(model.hf))
    bridges.fit = {"tokens": int(n), "r2": [round(float(x), 4) for x in 1 - sse / sst]}
    return bridges


# ---- artifact --------------------------------------------------------------------------------------------


def save_bridges(bridges: Bridges, directory: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in bridges.state_dict().items()}
    tmp = d / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, d / WEIGHTS_NAME)
    meta = {"format": FORMAT, "config": dataclasses.asdict(bridges.config), "base_model": bridges.base,
            "digest": bridges.digest(), "fit": bridges.fit}
    (d / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return d


def load_bridges(directory: str | os.PathLike, hf_model) -> Bridges:
    """The bridges stored in `directory`, after checking they were fit on `hf_model`."""
    from safetensors.torch import load_file

    from .checkpoint import check_base

    d = Path(directory)
    if not (d / CONFIG_NAME).is_file() or not (d / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{d} holds no bridges: expected {CONFIG_NAME} and {WEIGHTS_NAME} in it "
                                "(`l2a fit-bridges --out DIR` writes them)")
    meta = json.loads((d / CONFIG_NAME).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{d / CONFIG_NAME}: unsupported bridges format {meta.get('format')!r}")
    check_base(meta["base_model"], hf_model, f"bridges in {d}")
    state = load_file(str(d / WEIGHTS_NAME))
    bridges = Bridges(state.get("w"), state["b"], state.get("u"), state.get("v"), BridgeConfig(**meta["config"]),
                      meta["base_model"])
    bridges.fit = meta.get("fit", {})
    L = len(arch.decoder_layers(hf_model))
    if bridges.n_layers != L or bridges.hidden != hf_model.config.hidden_size:
        raise ValueError(f"bridges in {d} have {bridges.n_layers} layers of width {bridges.hidden}; "
                         f"the model has {L} of width {hf_model.config.hidden_size}")
    return bridges
