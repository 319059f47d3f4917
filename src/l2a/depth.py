"""depth: an optional depth head that gives each prompt its own number of layers at the same compute.

Why: at one budget, prompts differ in how much a missing layer costs them. Measured on SmolLM2 with GSM8K
chains (docs/results/gates.md): each chain given its own layer count at the same mean compute would lower
KL(dense ‖ gated) by 12–14% (an oracle), and prompt features predict part of it. The sampled-gate objective
learns this only weakly (its gradient is noisy at 4 samples per row), so the depth head is fit directly on the
objective's two terms, KL and layer cost, measured exactly on a grid of shifts:

1. For held-out training chains (never trained on), the gates decide at the request `budget` moved by s
   layers, s in `shifts`: per-chain KL sums KL_i(s) and realized counts n_i(s).
2. The per-chain best shift under one price per layer: s*_i = argmin_s KL_i(s) + λ p_i n_i(s), with λ set so
   that neither the mean count per chain nor the mean weighted by answer tokens rises above that of s = 0
   (`spend`), and the price p_i mixing "per chain" and "per answer token" chosen for the lowest KL: the
   Lagrangian of "lowest KL at the same compute, however compute is counted". A price per chain alone puts
   layers on long chains (their KL sums are large) and so raises the token-weighted count.
3. Ridge regression of s*_i on the router's standardised input and log prompt length (`think_input`),
   ridge strength and a shrinkage factor α chosen by K-fold cross-validation of the KL the predicted shifts
   reach (fractional shifts mix their two neighbours, the spend held fixed). α = 0, no head, is one
   of the choices: when features do not predict depth, the fit says so and installs nothing.

At inference the shift (clipped to ±DEPTH_MAX layers) moves each prompt's threshold-mode layer budget;
its bias is set so the fit chains' `spend` is the request's (the mean realized fraction still tracks
the request), and strict mode still caps each request. `l2a fit-depth` adds a head to a trained artifact,
on chains its training never reached, at full length (`fit_artifact`).

Measured (docs/results/gates.md): fit on chains cut at the training max_len (160 tokens) the head did not
transfer to whole test chains (6.4% worse than the budget-only ablation); fit on whole chains with a price per
chain only it was 5.5% better at equal mean layers but 0.4% at answer-token-weighted layers. With both counts
held (`spend`): 3.5% and 2.4% on the whole GSM8K test split (CIs 2.5–4.5% and 1.3–3.4%; the gates without a
head: 1.7% and 0.8%). Not here: the gates (gates.py), training (train.py).
"""

from __future__ import annotations

import torch

from .budget import Budget

SHIFTS = tuple(range(-3, 4))  # layers
RIDGES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
ALPHAS = tuple(a / 4 for a in range(9))  # 0 .. 2
TOKEN_SHARES = tuple(w / 10 for w in range(11))  # price per layer: per chain (0) .. per answer token (1)


def _curves(m, policy, pairs, pad_id: int, budget: float, shifts, progress: bool):
    """Per shift s (rows) and chain (columns): KL sums (S, N) and realized layer counts (S, N)."""
    from tqdm import tqdm

    from .gatecheck import chain_kl
    from .examples import pooled_prompts

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


def spend(counts: torch.Tensor, n_tok: torch.Tensor) -> float:
    """Compute of per-chain layer counts (N,), counted both ways and the larger taken: the mean count per
    chain (the realized fraction the tracking criterion averages over prompts) and the mean weighted by
    answer tokens (n_tok (N,): the modeled compute of those tokens). A depth head must not raise either."""
    return max(float(counts.mean()), float((counts * n_tok).sum() / n_tok.sum()))


def best_shifts(S: torch.Tensor, C: torch.Tensor, base: int, n_tok: torch.Tensor | None = None,
                token_shares=TOKEN_SHARES) -> torch.Tensor:
    """Each chain's shift index minimising KL_i(s) + λ p_i n_i(s) at the spend of shift index `base`.
    The price per layer p_i = (1 − w) + w T_i / mean(T) mixes a price per chain and one per answer token
    (T = n_tok); for each share w, λ is bisected so that `spend` is the base's, and the w with the lowest
    total KL is taken (the Lagrangian of "lowest KL with neither count of compute raised").
    S, C (K, N) -> (N,) indices."""
    T = torch.ones(S.shape[1], dtype=S.dtype) if n_tok is None else n_tok.to(S.dtype)  # (N,)
    want = spend(C[base], T)
    cols = torch.arange(S.shape[1])
    best = None
    for w in token_shares:
        price = C * ((1 - w) + w * T / T.mean())  # (K, N)
        lo, hi = 0.0, float(S.max() - S.min()) + 1.0  # λ = 0 takes the most layers, λ = hi the fewest
        for _ in range(60):
            lam = (lo + hi) / 2
            pick = (S + lam * price).argmin(0)
            lo, hi = (lam, hi) if spend(C[pick, cols], T) > want else (lo, lam)
        pick = (S + hi * price).argmin(0)
        total = float(S[pick, cols].sum())
        if best is None or total < best[0] - 1e-12:
            best = (total, pick)
    return best[1]


def _at(S, C, shifts, x, rows):
    """KL sums and counts of chains `rows` at fractional shifts x (N,) (each mixes its grid neighbours)."""
    from .gatecheck import mix

    x = x.clamp(float(shifts[0]), float(shifts[-1]))
    return mix(S, shifts[0], x)[rows], mix(C, shifts[0], x)[rows]


def common_offset(S, C, n_tok, shift: torch.Tensor, rows: torch.Tensor, shifts, target: float) -> float:
    """The offset o that, added to every shift (N,), brings the `spend` of chains `rows` to `target`."""
    a, b = -float(shifts[-1] - shifts[0]), float(shifts[-1] - shifts[0])  # spend rises with the offset
    for _ in range(50):
        mid = (a + b) / 2
        a, b = (mid, b) if spend(_at(S, C, shifts, shift + mid, rows)[1], n_tok[rows]) < target else (a, mid)
    return (a + b) / 2


def shifted_kl(S: torch.Tensor, C: torch.Tensor, n_tok: torch.Tensor, shift: torch.Tensor, rows: torch.Tensor,
               shifts, target: float) -> float:
    """Token-mean KL of chains `rows` at fractional shifts (N,), after moving every shift alike so that the
    chains' `spend` is `target` (the same compute, counted both ways)."""
    kl, _ = _at(S, C, shifts, shift + common_offset(S, C, n_tok, shift, rows, shifts, target), rows)
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
    y = torch.tensor(shifts, dtype=torch.double)[best_shifts(S, C, base, n_tok)]  # (N,) each chain's best shift
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
            total += shifted_kl(S, C, n_tok, shift, test, shifts, spend(C[base, test], n_tok[test])) * float(n_tok[test].sum())
        return total / float(n_tok.sum())

    grid = {(r, a): cv_kl(r, a) for r in RIDGES for a in ALPHAS if a > 0}
    none = float(S[base].sum() / n_tok.sum())  # every prompt at the request
    (r, alpha), best = min(grid.items(), key=lambda kv: kv[1])
    everyone = torch.arange(N)
    oracle = float(S[best_shifts(S, C, base, n_tok), everyone].sum() / n_tok.sum())
    rec = {"pairs": N, "budget": budget, "shifts": list(shifts), "kl_at_request": none, "per_chain_oracle": oracle,
           "oracle_gain": 1 - oracle / none, "ridge": r, "alpha": alpha, "cv_kl": best, "cv_gain": 1 - best / none}
    if best >= none:  # features do not predict depth on held-out folds: no head
        rec["alpha"] = 0.0
        del policy.depth_w, policy.depth_b
        return rec
    beta, mu = ridge(everyone, r)
    w = alpha * beta
    centred = (Z - mu) @ w  # (N,)
    offset = common_offset(S, C, n_tok, centred, everyone, shifts, spend(C[base], n_tok))  # same spend as the request
    policy.set_depth(w.float(), offset - float(mu @ w))
    shift = policy.depth_shift(pooled, lengths).double()
    _, counts = _at(S, C, shifts, shift, everyone)  # (N,) layers kept on the fit chains with the head
    rec.update(shift_mean=float(shift.mean()), shift_std=float(shift.std()),
               length_corr=float(torch.corrcoef(torch.stack([lengths.double(), shift]))[0, 1]),
               layers_at_request={"mean": float(C[base].mean()), "token_weighted": float((C[base] * n_tok).sum() / n_tok.sum())},
               layers_with_head={"mean": float(counts.mean()), "token_weighted": float((counts * n_tok).sum() / n_tok.sum())})
    return rec


def fit_artifact(m, directory, out, pairs: int = 320, max_len: int = 320, progress: bool = True) -> dict:
    """Fit a depth head for the gate artifact in `directory` on base model `m` and write the artifact with it
    to `out`. Its chains are training chains the artifact's run never reached (just before the ones it held
    out for warm start and validation), cut at `max_len` tokens with the prompt, as the test chains are."""
    from .checkpoint import load_gates, read_config, save_gates
    from .examples import example_order, math_examples
    from .train import VAL_PAIRS, TrainConfig

    training = read_config(directory).get("training") or {}
    saved = training.get("config")
    if not saved:
        raise ValueError(f"{directory}: no training config recorded, so the chains its training never saw are unknown")
    if pairs < 8:
        raise ValueError(f"need at least 8 chains to fit a depth head, got {pairs}")
    cfg = TrainConfig(**{**saved, "out": str(out)})
    if max_len < cfg.max_len:
        raise ValueError(f"max_len {max_len} would cut the chains shorter than training did ({cfg.max_len} tokens)")
    examples, source = math_examples(cfg, m.tokenizer, cut=max_len)  # the training run's examples, uncut answers
    order = example_order(cfg, len(examples))
    end = len(order) - cfg.warm_pairs - VAL_PAIRS
    reached = cfg.calib_prompts + cfg.steps * cfg.examples  # the front of the order: calibration, then training
    if end - pairs < reached:
        raise ValueError(f"its training reached {reached} of {len(order)} examples: at most {max(0, end - reached)} "
                         f"unseen chains remain, got {pairs}")
    policy = load_gates(directory, m.hf)
    pad_id = m.tokenizer.pad_token_id if m.tokenizer.pad_token_id is not None else 0
    rec = fit_depth(m, policy, [examples[i] for i in order[end - pairs : end]], pad_id, progress=progress)
    rec.update(max_len=max_len, data_source=source, gates=str(directory))
    save_gates(policy, out, m.hf, extra={**training, "depth": rec})
    return rec
