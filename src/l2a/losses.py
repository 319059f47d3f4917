"""The terms of L2A's unified objective (DESIGN decision 4), as pure tensor functions.

    CE(task) + λ_kl KL(p_dense ‖ p_gated) + λ_mono (nesting + agreement across budgets)
             + Σ_axis λ_axis hinge²(E[cost_axis] − b_axis − tol) + think-length NLL (think.py)

Plus the relaxed gates: Gumbel-sigmoid with a straight-through estimator (hard 0/1 forward, sigmoid
gradient backward) and an annealed temperature. Dual ascent on the λ_axis lives in train.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gumbel_sigmoid(logits: torch.Tensor, tau: float, hard: bool = True, generator=None, noise: float = 1.0) -> torch.Tensor:
    """Relaxed Bernoulli sample of keep-gates; with `hard`, 0/1 forward and the relaxed gradient backward.
    The hard sample keeps with probability sigmoid(logits / noise): `noise` < 1 makes it more deterministic."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-6, 1 - 1e-6)
    z = torch.sigmoid((logits + noise * (u.log() - (-u).log1p())) / tau)  # logistic noise
    if not hard:
        return z
    return (z > 0.5).to(z.dtype) + z - z.detach()


def gumbel_topk(scores: torch.Tensor, k: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A Plackett-Luce sample per row of (R, n) scores (items drawn without replacement, each with probability
    ∝ exp(score) among those left), by Gumbel-top-k: ((R, n) 0/1 keep of the first k[r] drawn, (R, n) the
    drawn order). k (R,) counts."""
    u = torch.rand(scores.shape, generator=generator, device=scores.device).clamp(1e-6, 1 - 1e-6)
    order = (scores - (-u.log()).log()).argsort(-1, descending=True)  # (R, n) Gumbel-perturbed ranking
    first = torch.arange(scores.shape[1], device=scores.device) < k[:, None]  # (R, n)
    return torch.zeros_like(scores).scatter_(1, order, first.to(scores.dtype)), order


def plackett_luce_logp(scores: torch.Tensor, order: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(R,) log-probability that a Plackett-Luce draw from (R, n) scores begins with order[:, :k] in that
    order (differentiable in the scores). The score-function gradient of a set's cost may use this ordered
    probability: the cost ignores the order, so the estimate stays unbiased for the set."""
    s = scores.gather(1, order)  # (R, n) scores in drawn order
    rest = torch.logcumsumexp(s.flip(-1), -1).flip(-1)  # (R, n) logsumexp over the items not drawn before
    first = torch.arange(scores.shape[1], device=scores.device) < k[:, None]  # (R, n)
    return ((s - rest) * first).sum(-1)


def token_kl(teacher_logp: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked tokens of KL(teacher ‖ student). teacher_logp, student_logits (B, T, V); mask (B, T)."""
    keep = mask.bool()  # only the M masked positions go through the vocab-wide ops
    t = teacher_logp[keep].float()  # (M, V)
    s = F.log_softmax(student_logits[keep].float(), -1)  # (M, V)
    return (t.exp() * (t - s)).sum(-1).mean() if t.shape[0] else s.sum() * 0


def logits_keep(target_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool `logits_to_keep` for transformers: the positions whose logits predict a masked target of
    (B, T-1) `target_mask` (position t predicts token t + 1); the logits come back packed (M, V) row-major."""
    return torch.cat([target_mask.bool(), torch.zeros_like(target_mask[:, :1], dtype=torch.bool)], 1)


def position_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor, teacher_p: torch.Tensor | None = None):
    """(...,) KL(teacher ‖ student) at each position; log-probs (..., V); `teacher_p` = teacher_logp.exp() if
    already computed (the same numbers)."""
    p = teacher_logp.exp() if teacher_p is None else teacher_p
    return (p * (teacher_logp - student_logp)).sum(-1)


def row_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) per-row sum over masked positions of `values`, given (B, T) or packed (M,) in row-major order of
    mask (B, T)'s nonzero positions (what `x[mask.bool()]` gives). Both forms give the same bits."""
    if values.shape != mask.shape:
        full = values.new_zeros(mask.shape)  # (B, T)
        full[mask.bool()] = values
        values = full
    return (values * mask).sum(-1)


def row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) per-row mean over masked positions of `values` ((B, T) or packed (M,), as `row_sum`)."""
    return row_sum(values, mask) / mask.sum(-1).clamp_min(1)


def row_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) per-row mean over masked tokens of KL(teacher ‖ student); both log-probs (B, T, V), mask (B, T)."""
    return row_mean(position_kl(teacher_logp, student_logp), mask)


def nll(student_logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(...,) next-token negative log-likelihood; log-probs (..., V) predict targets (...)."""
    return -student_logp.gather(-1, targets[..., None])[..., 0]


def row_ce(student_logp: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) per-row mean next-token cross-entropy over masked positions; log-probs (B, T, V) predict targets (B, T)."""
    return row_mean(nll(student_logp, targets), mask)


def token_ce(student_logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over masked positions. logits (B, T, V) predict targets (B, T)."""
    keep = mask.bool()
    if not keep.any():
        return student_logits.sum() * 0
    return F.cross_entropy(student_logits[keep].float(), targets[keep])


def cost_hinge(expected: torch.Tensor, budget: torch.Tensor, tol: float) -> torch.Tensor:
    """(B,) squared hinge of expected cost over budget + tolerance (SOL's penalty, 2% tolerance there)."""
    return F.relu(expected - budget - tol).pow(2)


def batch_cost_hinge(expected: torch.Tensor, budget: torch.Tensor, tol: float, row_tol: float) -> torch.Tensor:
    """Cost penalty on a batch's *mean* spend: hinge²(mean over rows of E[cost] − b, minus tol), plus each
    row's hinge² past a wide `row_tol`. Rows at budget 1 are left out (they cannot overspend, and their
    slack must not pay for other rows). Within the tolerance a prompt may run more layers than its
    budget if another runs fewer: the shared multiplier prices a layer alike for every prompt, so the
    layers go where they lower the task cost most (per-prompt depth). expected, budget (B,) -> scalar."""
    free = budget < 1
    if not free.any():
        return expected.sum() * 0
    over = expected[free] - budget[free]  # (F,)
    return F.relu(over.mean() - tol).pow(2) + F.relu(over - row_tol).pow(2).mean()


def nesting(p_low: torch.Tensor, p_high: torch.Tensor) -> torch.Tensor:
    """Cross-budget consistency of kept sets: a lower budget should not keep with higher probability."""
    return F.relu(p_low - p_high).mean()


def rank_anchor(logits: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Trust region on the layer ranking: mean squared difference of (B, n) logits and reference logits,
    each z-scored over its row. Free to shift and scale (the cost term moves every layer's logit with the
    budget; late training sharpens them), so it only resists reordering the layers."""
    z = lambda x: (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True).clamp_min(1e-6)  # noqa: E731
    return (z(logits.float()) - z(ref.detach().float())).pow(2).mean()


def agreement(logits_low: torch.Tensor, logits_high: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-budget consistency of answers: KL(stopgrad(p_high) ‖ p_low) over masked tokens."""
    return token_kl(F.log_softmax(logits_high.detach().float(), -1), logits_low, mask)


def think_nll(mu: torch.Tensor, sigma: torch.Tensor, log_len: torch.Tensor) -> torch.Tensor:
    """The think-length term: mean Gaussian NLL (constant dropped) of log sufficient lengths (B,) under the
    think head's (mu, sigma) (B,); its quantiles are the allowances (gates.GatePolicy.allowance)."""
    return (0.5 * ((log_len - mu) / sigma).pow(2) + sigma.log()).mean()
