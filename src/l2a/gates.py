"""GatePolicy: the learned, budget-conditioned, input-aware gates of L2A (DESIGN decisions 2 and 3).

A small network reads the prompt's hidden states after the first `router_layers` decoder layers (pooled
over prompt tokens) and the request's budget, and emits keep-logits for every gateable layer and every
KV-head group, plus a think allowance. The budget enters three ways: Fourier features + MLP give
a budget embedding; the embedding modulates the router's hidden units (FiLM); and it adds a bias to the
gate logits (SOL's `budget_head` pattern).

Inference turns logits into hard `GateDecision`s:
- *threshold*: keep where the logit exceeds its calibrated threshold (0 without calibration). Kept sets are nested across budgets by construction: a
  layer is kept at budget b only if it is also kept at every grid budget that dominates b on the layer
  and head axes (the training consistency term makes the raw sets nearly nested, so this removes little).
- *strict*: the threshold set at the largest budget b' <= b whose set fits floor(b * L) layers, so the
  realized fraction never exceeds the budget and sets stay nested.
- *exact*: exactly the static baselines' layer count at b (baselines.kept_count) for every prompt, taken in
  the prompt's own ranking: by the lowest grid budget whose threshold set still keeps a layer, then by its
  logit there. One ranking per prompt for every layer budget, so sets stay nested; where a threshold set
  has that count, it is the exact set. Input-aware choice of layers at the static methods' own cost.
A calibration table (fit after training on held-out prompts, calibration.calibrate) gives each requested layer
budget an effective budget and a logit threshold, so the mean realized fraction tracks the request even
where the raw gates saturate (a layer is kept where its logit exceeds the threshold; budget 1.0 keeps all).

An optional depth head (depth.py; gates without one hold no depth buffers) moves each prompt's
threshold-mode layer budget by a few layers, up or down, fit so that the mean stays on the request.

The think head predicts, per prompt, a log-normal distribution of the shortest sufficient chain of
thought (the fewest think tokens after which forcing the answer still gives the dense answer; fit by
truncation probing, think.py). The allowance at b_think follows one of two rules (`allowances`): the
distribution's b_think-quantile, exp(mu + sigma * Phi^-1(b_think)) - THINK_OFFSET, or triage: the
budget's input-blind cap for prompts likely to finish within it, nothing for the others. The fit chooses
(think.py). Either way the allowance is monotone in b_think for every prompt and b_think = 1 is no cap.
Not here: running the model (gated.py) or training (train.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .baselines import kept_count
from .budget import Budget
from .decision import GateDecision

MODES = ("threshold", "strict", "exact")  # how logits become hard decisions (module docstring)
GRID = tuple(round(0.05 * i, 2) for i in range(1, 21))  # budgets 0.05 .. 1.0 used for nesting
DEPTH_MAX = 3.0  # largest depth-head shift, in layers
DEPTH_TOP = 0.99  # a shifted layer budget stays below 1: only a request of 1.0 is the dense model
THINK_OFFSET = 8.0  # think lengths are modeled as log(tokens + THINK_OFFSET): zero thinking is allowed


@dataclass
class GateConfig:
    """Shape and conditioning of a GatePolicy (saved in l2a_config.json)."""

    n_layers: int  # decoder layers of the base model
    n_groups: int  # KV-head groups per layer
    hidden: int  # hidden size of the base model
    router_layers: int = 1  # first layers always run; the router reads their output
    protect_last: int = 1  # last layers always run
    width: int = 256  # router hidden width
    n_freq: int = 6  # Fourier frequencies per budget axis
    budget_dim: int = 64  # budget embedding width
    max_think: int = 512  # largest think allowance below b_think = 1 (1 = uncapped)
    budget_only: bool = False  # ablation: the router input is zeroed, decisions depend on the budget only
    calibration: list = field(default_factory=list)  # [[requested, effective(, threshold)], ...] layer axis
    untrained: list = field(default_factory=list)  # axes ("layers", "heads") never trained: budgets < 1 refused
    think_triage: list = field(default_factory=list)  # [mu0, sigma0, p]: the triage think rule (see allowances)

    def __post_init__(self):
        if self.router_layers < 1 or self.protect_last < 0:
            raise ValueError("router_layers must be >= 1 and protect_last >= 0")
        if self.router_layers + self.protect_last >= self.n_layers:
            raise ValueError(
                f"router_layers ({self.router_layers}) + protect_last ({self.protect_last}) leave no gateable "
                f"layer of {self.n_layers}"
            )

    @property
    def gateable(self) -> tuple[int, ...]:
        return tuple(range(self.router_layers, self.n_layers - self.protect_last))

    @property
    def protected(self) -> int:
        return self.n_layers - len(self.gateable)


class BudgetEmbedding(nn.Module):
    """(B, A) budgets -> (B, E): Fourier features of each axis, then a small MLP."""

    def __init__(self, n_axes: int, n_freq: int, dim: int):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq).float(), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(n_axes * (2 * n_freq + 1), dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        x = b[..., None] * self.freqs  # (B, A, F)
        feats = torch.cat([x.sin(), x.cos(), b[..., None]], -1).flatten(-2)  # (B, A*(2F+1))
        return self.mlp(feats)


@dataclass
class GateLogits:
    layers: torch.Tensor  # (B, n_gateable) keep-logits of gateable layers
    groups: torch.Tensor  # (B, L, G) keep-logits of KV-head groups
    think: torch.Tensor  # (B,) log(allowance + THINK_OFFSET) at the row's b_think


class GatePolicy(nn.Module):
    """Budget-conditioned router over pooled prompt states. `name = "l2a"` in the Policy registry.

    Layer and group gates are conditioned on (b_layer, b_head); the think head on b_think alone, so
    the reasoning axis never changes which layers run.
    """

    name = "l2a"

    def __init__(self, config: GateConfig):
        super().__init__()
        self.config = c = config
        n_out = len(c.gateable) + c.n_layers * c.n_groups
        self.budget = BudgetEmbedding(2, c.n_freq, c.budget_dim)
        self.norm = nn.LayerNorm(c.hidden, elementwise_affine=False)
        self.inp = nn.Linear(c.hidden, c.width)
        self.film = nn.Linear(c.budget_dim, 2 * c.width)
        self.out = nn.Linear(c.width, n_out)
        self.bias = nn.Linear(c.budget_dim, n_out)
        # Think head: linear in the standardised pooled input and the prompt's log length (which mean
        # pooling hides), one shared sigma; its own parameters, so fitting it never moves the gates.
        self.think_mu = nn.Linear(c.hidden + 1, 1)
        self.think_log_sigma = nn.Parameter(torch.tensor(math.log(0.5)))
        self.register_buffer("length_stats", torch.tensor([4.5, 0.5]))  # mean, std of log prompt length
        # Start near "keep everything": FiLM near identity, logits near +2. Small (not zero) weights so
        # every parameter, the budget embedding included, gets a gradient from the first step.
        for lin in (self.film, self.out, self.bias):
            nn.init.normal_(lin.weight, std=0.01)
            nn.init.zeros_(lin.bias)
        nn.init.constant_(self.out.bias, 2.0)
        nn.init.normal_(self.think_mu.weight, std=0.01)  # untrained: median ~120 tokens, sigma 0.5
        nn.init.constant_(self.think_mu.bias, math.log(120 + THINK_OFFSET))
        # Per-feature standardisation of the pooled input, fit on training prompts (`fit_input`). Without
        # it the router sees mostly what all prompts share: with causal attention the chat template's
        # tokens have the same states in every prompt, and they dominate the mean.
        self.register_buffer("input_mean", torch.zeros(c.hidden))
        self.register_buffer("input_std", torch.ones(c.hidden))
        self.input_scale = 0.0 if c.budget_only else 1.0  # 0: budget-only ablation

    # -- network ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def fit_input(self, pooled: torch.Tensor) -> None:
        """Fit the input standardisation on (N, H) pooled states of training prompts."""
        self.input_mean.copy_(pooled.float().mean(0))
        self.input_std.copy_(pooled.float().std(0).clamp_min(1e-4))

    def _input(self, pooled: torch.Tensor) -> torch.Tensor:
        z = (pooled.float() - self.input_mean) / self.input_std  # (B, H) standardised
        return self.norm(z) * self.input_scale

    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, H) pooled prompt states -> (B, W) input features (budget-independent part)."""
        return self.inp(self._input(pooled))

    def think_input(self, pooled: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H + 1) think-head input: standardised pooled states and standardised log prompt length."""
        if lengths is None:
            z_len = torch.zeros(pooled.shape[0], device=pooled.device)
        else:
            z_len = (lengths.float().clamp_min(1).log() - self.length_stats[0]) / self.length_stats[1]
        return torch.cat([self._input(pooled), z_len[:, None] * self.input_scale], -1)

    def think_params(self, pooled: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H) pooled prompt states and (B,) prompt lengths in tokens (None: the average) -> (mu (B,),
        sigma (B,)) of log(shortest sufficient think + OFFSET)."""
        mu = self.think_mu(self.think_input(pooled, lengths))[:, 0]  # (B,)
        return mu, self.think_log_sigma.exp().expand_as(mu)

    # -- depth head (optional, depth.py) ---------------------------------------------------------------

    def set_depth(self, weight: torch.Tensor, bias: float) -> None:
        """Install a depth head: a linear map of `think_input` (H + 1,) to a shift in layers (depth.fit_depth).
        Gates without one keep no depth buffers, so their weights and digest stay as they were."""
        self.register_buffer("depth_w", weight.detach().float().reshape(-1).clone())
        self.register_buffer("depth_b", torch.tensor([float(bias)]))

    def depth_shift(self, pooled: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) layers each prompt's threshold-mode decision moves by (0 without a depth head), within ±DEPTH_MAX."""
        if not hasattr(self, "depth_w"):
            return torch.zeros(pooled.shape[0], device=pooled.device)
        shift = self.think_input(pooled, lengths) @ self.depth_w + self.depth_b  # (B,)
        return shift.clamp(-DEPTH_MAX, DEPTH_MAX)

    @staticmethod
    def log_allowance(mu: torch.Tensor, sigma: torch.Tensor, b_think: torch.Tensor) -> torch.Tensor:
        """log(allowance + OFFSET) at quantile level b_think (B,) in (0, 1); increasing in b_think."""
        return mu + sigma * torch.special.ndtri(b_think.clamp(1e-3, 1 - 1e-3))

    def allowance(self, mu: float, sigma: float, b_think: float) -> int | None:
        """Think tokens allowed at b_think for one row (None at b_think = 1: uncapped)."""
        if b_think >= 1.0:
            return None
        a = allowances(torch.tensor([mu]), torch.tensor(sigma), b_think, self.config.think_triage or None)
        return int(min(self.config.max_think, round(float(a[0]))))

    def gate_logits(self, feats: torch.Tensor, budgets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (N, W), budgets (N, 2) = (b_layer, b_head) -> layer (N, n_gate), group (N, L, G) logits."""
        c = self.config
        e = self.budget(budgets)  # (N, E)
        gamma, beta = self.film(e).chunk(2, -1)  # (N, W) each
        h = F.gelu(feats * (1 + gamma) + beta)
        logits = self.out(h) + self.bias(e)  # (N, n_gate + L*G)
        n_gate = len(c.gateable)
        return logits[:, :n_gate], logits[:, n_gate:].view(-1, c.n_layers, c.n_groups)

    def forward(self, pooled: torch.Tensor, budgets: torch.Tensor, lengths: torch.Tensor | None = None) -> GateLogits:
        """pooled (B, H) prompt states after the router layers; budgets (B, 3); lengths (B,) -> logits."""
        feats = self.features(pooled)
        layers, groups = self.gate_logits(feats, budgets[:, :2])
        think = self.log_allowance(*self.think_params(pooled, lengths), budgets[:, 2])
        return GateLogits(layers=layers, groups=groups, think=think)

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Mean of (B, T, H) over real tokens -> (B, H)."""
        if attention_mask is None:
            return hidden.mean(1)
        m = attention_mask[..., None].to(hidden.dtype)  # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1)

    # -- budgets -------------------------------------------------------------------------------------------

    def effective(self, b: float) -> float:
        """Calibrated layer budget: piecewise-linear through the calibration table (identity if none)."""
        table = self.config.calibration
        if not table:
            return b
        if b <= table[0][0]:
            return table[0][1] * b / table[0][0]
        return _interp(table, b, 1)

    def threshold(self, b: float) -> float:
        """Layer-logit threshold at requested layer budget b: the table's third column (0 if none), -inf at 1.0."""
        if b >= 1.0:
            return -math.inf
        table = [row for row in self.config.calibration if len(row) > 2]
        if not table:
            return 0.0
        return table[0][2] if b <= table[0][0] else _interp(table, b, 2)

    def budget_tensor(self, budgets: list[Budget], device=None) -> torch.Tensor:
        """(B, 3) effective (b_layer, b_head, b_think)."""
        return torch.tensor([[self.effective(b.layers), b.heads, b.think] for b in budgets], device=device)

    # -- hard decisions -------------------------------------------------------------------------------

    @torch.no_grad()
    def decisions(self, pooled: torch.Tensor, budgets: list[Budget], mode: str = "threshold",
                  lengths: torch.Tensor | None = None) -> list[GateDecision]:
        """Hard per-row decisions from pooled prompt states (B, H) (and prompt lengths (B,) for the think head)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        c = self.config
        for axis in c.untrained:
            if any(getattr(b, axis) < 1.0 for b in budgets):
                raise ValueError(f"this gate artifact has no trained {axis} gates (think head only): give "
                                 f"Budget({axis}=1.0, ...) and vary the other axes, or load gates trained by `l2a train`")
        feats = self.features(pooled)  # (B, W)
        anchor = self.gate_logits(feats, torch.ones(len(budgets), 2, device=feats.device))[1].argmax(-1)  # (B, L)
        mu, sigma = self.think_params(pooled, lengths)  # (B,), (B,)
        # The depth head moves each prompt's layer budget by its shift (threshold mode; strict caps at the request).
        shift = self.depth_shift(pooled, lengths) if mode == "threshold" else torch.zeros(len(budgets), device=feats.device)  # (B,)
        rows_at: dict = {}  # rows sharing a budget are decided together
        for i, b in enumerate(budgets):
            lay = b.layers if b.layers >= 1.0 else min(DEPTH_TOP, max(GRID[0], b.layers + float(shift[i]) / c.n_layers))
            rows_at.setdefault((lay, b.heads), []).append(i)
        nested_l = torch.empty(len(budgets), c.n_layers, dtype=torch.bool, device=feats.device)  # (B, L)
        nested_g = torch.empty(len(budgets), c.n_layers, c.n_groups, dtype=torch.bool, device=feats.device)
        for (lay, head), rows in rows_at.items():
            nested_l[rows], nested_g[rows] = self._nested(feats[rows], lay, head)
        exact = self._exact(feats, budgets) if mode == "exact" else None  # (B, L)
        out = []
        for i, b in enumerate(budgets):
            keep_l, keep_g = nested_l[i], nested_g[i]  # (L,), (L, G)
            if mode == "strict":
                keep_l, keep_g = self._strict(feats[i], b, keep_l, keep_g, anchor[i])
            elif mode == "exact" and b.layers < 1.0:
                keep_l = exact[i]
            keep_g[: c.router_layers] = True  # the router pass runs these densely and prefill reuses it
            if b.layers >= 1.0:  # a full axis budget is no restriction: budget 1.0 is the dense model
                keep_l[:] = True
            if b.heads >= 1.0:
                keep_g[:] = True
            # Every layer keeps its best group at full budget (budget-independent, so nesting survives).
            keep_g[torch.arange(c.n_layers), anchor[i]] = True
            out.append(GateDecision(layers=tuple(keep_l.tolist()), kv_groups=tuple(map(tuple, keep_g.tolist())),
                                    think_tokens=self.allowance(float(mu[i]), float(sigma[i]), b.think)))
        return out

    def _logits(self, feats: torch.Tensor, points: list[tuple[float, float]]):
        """Rows' features (R, W) at budget points [(b_layer, b_head)] -> ((R, P, n_gate), (R, P, L, G)).

        Layer logits are returned relative to each point's calibrated threshold (keep where > 0)."""
        c = self.config
        R, P = feats.shape[0], len(points)
        b = torch.tensor([[self.effective(lay), head] for lay, head in points], device=feats.device)  # (P, 2)
        thr = torch.tensor([self.threshold(lay) for lay, _ in points], device=feats.device)  # (P,)
        lg, gg = self.gate_logits(feats.repeat_interleave(P, 0), b.repeat(R, 1))  # (R*P, n_gate), (R*P, L, G)
        return lg.view(R, P, -1) - thr[None, :, None], gg.view(R, P, c.n_layers, c.n_groups)

    def _nested(self, feats: torch.Tensor, lay: float, head: float):
        """Threshold sets ANDed over every grid point that dominates (lay, head) on both axes, for rows'
        features (R, W) -> kept layers (R, L), kept groups (R, L, G).

        Any budget that is at most another on both axes then keeps a subset of its layers and groups:
        nesting holds by construction, including along the scalar schedule (monotone on every axis).
        """
        c = self.config
        points = [(l2, h2) for l2 in {lay, *GRID} if l2 >= lay for h2 in {head, *GRID} if h2 >= head]
        lg, gg = self._logits(feats, points)  # (R, P, n_gate), (R, P, L, G)
        keep_l = torch.ones(feats.shape[0], c.n_layers, dtype=torch.bool, device=feats.device)
        keep_l[:, list(c.gateable)] = (lg > 0).all(1)
        return keep_l, (gg > 0).all(1)

    def _strict(self, feat, b: Budget, keep_l, keep_g, anchor):
        """Never above floor(b * L) layers or floor(b * G) groups per layer, staying nested."""
        c = self.config
        limit = max(c.protected, math.floor(b.layers * c.n_layers + 1e-9))
        if int(keep_l.sum()) > limit:
            for g in sorted((g for g in GRID if g < b.layers), reverse=True):
                lower = self._nested(feat[None], g, b.heads)[0][0]
                if int(lower.sum()) <= limit:
                    keep_l = lower
                    break
            else:  # even the lowest grid budget keeps too many: the best-ranked of that set, ranked at
                # that budget (one ranking for every budget, so sets stay nested as the limit grows)
                lowest = self._nested(feat[None], GRID[0], b.heads)[0][0]
                lg = self._logits(feat[None], [(GRID[0], b.heads)])[0][0, 0]  # (n_gate,)
                lg = lg.masked_fill(~lowest[list(c.gateable)], float("-inf"))
                keep_l = torch.zeros(c.n_layers, dtype=torch.bool, device=feat.device)
                keep_l[: c.router_layers] = True
                keep_l[c.n_layers - c.protect_last :] = True
                order = lg.argsort(descending=True)[: limit - c.protected].tolist()
                keep_l[[c.gateable[j] for j in order]] = True
        g_limit = max(1, math.floor(b.heads * c.n_groups + 1e-9))
        keep_g = keep_g.clone()
        keep_g[torch.arange(c.n_layers), anchor] = True  # the anchor group is always kept: count it
        over = keep_g.sum(-1) > g_limit  # (L,) layers keeping too many groups
        if over.any():
            gg = self._logits(feat[None], [(b.layers, b.heads)])[1][0, 0].masked_fill(~keep_g, float("-inf"))  # (L, G)
            gg[torch.arange(c.n_layers), anchor] = float("inf")
            limited = torch.zeros_like(keep_g).scatter_(1, gg.topk(g_limit, -1).indices, True) & keep_g
            keep_g = torch.where(over[:, None], limited, keep_g)
        return keep_l, keep_g

    def _exact(self, feats: torch.Tensor, budgets: list[Budget]) -> torch.Tensor:
        """Rows' features (B, W) -> kept layers (B, L): per row kept_count(L, b.layers), the protected layers
        and then the gateable ones in the row's ranking, rows sharing a head budget ranked in one call."""
        c = self.config
        keep = torch.zeros(len(budgets), c.n_layers, dtype=torch.bool, device=feats.device)
        keep[:, : c.router_layers] = True
        keep[:, c.n_layers - c.protect_last :] = True
        gate = torch.tensor(c.gateable, device=feats.device)
        for head in {b.heads for b in budgets}:
            rows = [i for i, b in enumerate(budgets) if b.heads == head]
            lg = self._logits(feats[rows], [(g, head) for g in GRID])[0]  # (R, P, n_gate), GRID ascending
            kept = (lg > 0).flip(1).cumprod(1).flip(1).sum(1)  # (R, n_gate) grid budgets of _nested's sets keeping it
            order = lg[:, 0].argsort(-1, descending=True)  # ties broken by the logit at the lowest grid budget
            order = order.gather(1, kept.gather(1, order).argsort(dim=-1, descending=True, stable=True))  # kept longest first
            k = torch.tensor([kept_count(c.n_layers, budgets[i].layers) - c.protected for i in rows], device=feats.device)
            first = torch.arange(len(gate), device=feats.device) < k[:, None]  # (R, n_gate) the first k of each ranking
            keep[torch.tensor(rows, device=feats.device)[:, None], gate] = torch.zeros_like(first).scatter_(1, order, first)
        return keep

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config_dict(self) -> dict:
        return asdict(self.config)


def _interp(table: list, b: float, col: int) -> float:
    """Piecewise-linear value of column `col` at b through rows sorted by column 0 (last row beyond)."""
    for r0, r1 in zip(table, table[1:]):
        if b <= r1[0]:
            return r0[col] + (r1[col] - r0[col]) * (b - r0[0]) / (r1[0] - r0[0])
    return table[-1][col]


def allowances(mu: torch.Tensor, sigma: torch.Tensor, b_think: float, triage: list | None = None) -> torch.Tensor:
    """Think allowances in tokens (N,) at b_think in (0, 1) from the head's mu (N,) and sigma.

    quantile rule (triage None): each prompt's b_think-quantile of its sufficient length, so a prompt
      predicted to need more gets more.
    triage rule ([mu0, sigma0, p]): one cap per budget, the b_think-quantile of the input-blind
      distribution (mu0, sigma0), for the prompts predicted to finish within it with probability >= p;
      the others answer at once (allowance 0). Under a mean-token budget this keeps more answers than
      the quantile rule: tokens go to prompts likely to finish, not to those a cut would lose anyway.
    Both are monotone in b_think for every prompt (the cap grows, and with it each prompt's probability)."""
    z = torch.special.ndtri(torch.tensor(min(max(b_think, 1e-3), 1 - 1e-3), dtype=mu.dtype))
    if not triage:
        return (torch.exp(mu + sigma * z) - THINK_OFFSET).clamp_min(0)
    mu0, sigma0, p = triage
    log_cap = mu0 + sigma0 * z  # scalar or (N,)
    finish = torch.special.ndtr((log_cap - mu) / sigma) >= p  # (N,)
    return torch.where(finish, torch.exp(log_cap) - THINK_OFFSET, torch.zeros_like(mu)).clamp_min(0)
