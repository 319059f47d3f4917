"""depth: an optional depth head that gives each prompt its own number of layers at the same mean compute.

Why: at one budget, prompts differ in how much a missing layer costs them. Measured on SmolLM2 with GSM8K
chains (README): each chain given its own layer count at the same mean compute would lower KL(dense ‖ gated)
by 12–14% (an oracle), and prompt features predict part of it. The sampled-gate objective learns this only
weakly (its gradient is noisy at 4 samples per row), so the depth head is fit directly on the objective's two
terms, KL and layer cost, measured exactly on a grid of shifts:

1. For held-out training chains (never trained on), the gates decide at the request `budget` moved by s
   layers, s in `shifts`: per-chain KL sums KL_i(s) and realized counts n_i(s).
2. The per-chain best shift under one price per layer: s*_i = argmin_s KL_i(s) + λ n_i(s), with λ set so
   the mean count equals that of s = 0 (the Lagrangian of "lowest KL at the same mean compute").
3. Ridge regression of s*_i on the router's standardised input and log prompt length (`think_input`),
   ridge strength and a shrinkage factor α chosen by K-fold cross-validation of the KL the predicted shifts
   reach (fractional shifts mix their two neighbours, the mean count held fixed). α = 0, no head, is one
   of the choices: when features do not predict depth, the fit says so and installs nothing.

At inference the shift (clipped to ±DEPTH_MAX layers) moves each prompt's threshold-mode layer budget;
the calibration table is refit afterwards, so the *mean* realized fraction still tracks every request,
and strict mode still caps each request.

Measured (README): on the shipped SmolLM2 gates a fit on 320 train chains gained 6.5% in cross-validation
but was 6.4% *worse* than the budget-only ablation on GSM8K test chains. The fit's chains are cut at the
training `max_len` (160 tokens, prompt included), the test chains are not; fitting on full-length chains
is the open next step. Not here: the gates (gates.py), training (train.py).
"""

from __future__ import annotations

import torch

from .budget import Budget

SHIFTS = tuple(range(-3, 4))  # layers
RIDGES = (1.0, 3.0, 10.0, 30.0, 100.0)
ALPHAS = tuple(a / 4 for a in range(9))  # 0 .. 2


def _curves(m, policy, pairs, pad_id: int, budget: float, shifts, progress: bool):
    """Per shift s (rows) and chain (columns): KL sums (S, N) and realized layer counts (S, N)."""
    from tqdm import tqdm

    from .gatecheck import chain_kl
    from .train import pooled_prompts

    pooled = pooled_prompts(m, policy, [p for p, _ in pairs], pad_id)  # (N, H)
    lengths = torch.tensor([len(p) for p, _ in pairs])
    L = policy.config.n_layers
    sums, counts, n_tok = [], [], None
    for s in tqdm(shifts, desc="depth curves", disable=not progress):
        policy.set_depth(torch.zeros(policy.config.hidden + 1), float(s))  # every prompt moved by s layers
        ds = policy.decisions(pooled, [Budget(layers=budget)] * len(pairs), lengths=lengths)
        kl, n_tok = chain_kl(m, pairs, ds)
        sums.append(kl)
        counts.append(torch.tensor([d.layer_fraction * L for d in ds]))
    return torch.stack(sums).double(), torch.stack(counts).double(), n_tok.double(), pooled, lengths


def best_shifts(S: torch.Tensor, C: torch.Tensor, base: int) -> torch.Tensor:
    """Each chain's shift index minimising KL_i(s) + λ n_i(s), λ bisected so the mean count is that of
    shift index `base`. S, C (K, N) -> (N,) indices."""
    want = float(C[base].mean())
    cols = torch.arange(S.shape[1])
    lo, hi = 0.0, float(S.max() - S.min()) + 1.0  # λ = 0 takes the most layers, λ = hi the fewest
    for _ in range(60):
        lam = (lo + hi) / 2
        pick = (S + lam * C).argmin(0)
        lo, hi = (lam, hi) if float(C[pick, cols].mean()) > want else (lo, lam)
    return (S + hi * C).argmin(0)


def shifted_kl(S: torch.Tensor, C: torch.Tensor, n_tok: torch.Tensor, shift: torch.Tensor, rows: torch.Tensor,
               shifts, target: float) -> float:
    """Token-mean KL of chains `rows` at fractional shifts (N,) (each mixes its two neighbouring grid shifts),
    after moving every shift alike so the chains' mean count is `target` (the same mean compute)."""
    from .gatecheck import mix

    lo, hi = float(shifts[0]), float(shifts[-1])

    def at(x):  # x (N,) shifts -> (KL sums, counts) of `rows`
        x = x.clamp(lo, hi)
        return mix(S, shifts[0], x)[rows], mix(C, shifts[0], x)[rows]

    a, b = -(hi - lo), hi - lo  # bisect a common offset: the mean count rises with it
    for _ in range(50):
        mid = (a + b) / 2
        a, b = (mid, b) if float(at(shift + mid)[1].mean()) < target else (a, mid)
    kl, _ = at(shift + (a + b) / 2)
    return float(kl.sum() / n_tok[rows].sum())


def fit_depth(m, policy, pairs, pad_id: int, budget: float = 0.7, shifts=SHIFTS, folds: int = 5, seed: int = 0,
              progress: bool = True) -> dict:
    """Fit and install the depth head of `policy` on held-out (prompt, answer) `pairs` (see the module
    docstring); a calibrated policy is assumed (its thresholds define the requests). Returns the fit record;
    `alpha` 0 means no head was installed."""
    if policy.config.budget_only:
        raise ValueError("a budget-only policy reads no input: it cannot have a depth head")
    shifts = tuple(shifts)
    S, C, n_tok, pooled, lengths = _curves(m, policy, pairs, pad_id, budget, shifts, progress)
    base = shifts.index(0)
    Z = policy.think_input(pooled, lengths).double()  # (N, H + 1) standardised input, log length
    y = torch.tensor(shifts, dtype=torch.double)[best_shifts(S, C, base)]  # (N,) each chain's best shift
    N = Z.shape[0]
    fold = torch.randperm(N, generator=torch.Generator().manual_seed(seed)) % folds  # (N,)

    def ridge(rows, r):
        mu, ym = Z[rows].mean(0), y[rows].mean()
        A = Z[rows] - mu
        beta = torch.linalg.solve(A.T @ A + r * torch.eye(A.shape[1], dtype=torch.double), A.T @ (y[rows] - ym))
        return beta, mu

    def cv_kl(r, alpha):
        total = 0.0
        for k in range(folds):
            fit, test = (fold != k).nonzero()[:, 0], (fold == k).nonzero()[:, 0]
            beta, mu = ridge(fit, r)
            shift = alpha * (Z - mu) @ beta  # (N,)
            total += shifted_kl(S, C, n_tok, shift, test, shifts, float(C[base, test].mean())) * float(n_tok[test].sum())
        return total / float(n_tok.sum())

    grid = {(r, a): cv_kl(r, a) for r in RIDGES for a in ALPHAS if a > 0}
    none = float(S[base].sum() / n_tok.sum())  # every prompt at the request
    (r, alpha), best = min(grid.items(), key=lambda kv: kv[1])
    everyone = torch.arange(N)
    oracle = float(S[best_shifts(S, C, base), everyone].sum() / n_tok.sum())
    rec = {"pairs": N, "budget": budget, "shifts": list(shifts), "kl_at_request": none, "per_chain_oracle": oracle,
           "oracle_gain": 1 - oracle / none, "ridge": r, "alpha": alpha, "cv_kl": best, "cv_gain": 1 - best / none}
    if best >= none:  # features do not predict depth on held-out folds: no head
        rec["alpha"] = 0.0
        del policy.depth_w, policy.depth_b
        return rec
    beta, mu = ridge(everyone, r)
    w = alpha * beta
    bias = -float(mu @ w)
    policy.set_depth(w.float(), bias)
    shift = policy.depth_shift(pooled, lengths).double()
    rec.update(shift_mean=float(shift.mean()), shift_std=float(shift.std()),
               length_corr=float(torch.corrcoef(torch.stack([lengths.double(), shift]))[0, 1]))
    return rec
