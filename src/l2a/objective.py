"""objective: L2A's unified objective on one training batch, with two gradient estimators.

    ce·CE + kl·KL(dense ‖ gated) + agree·KL(gated_hi ‖ gated_lo) + mono·nesting
          + Σ λ_axis·hinge²(E[cost] − b − tol) + track·(E[cost] − b)²

The cost hinge is per row (`cost = "request"`: each prompt kept near its own budget), or on the batch's
mean spend with a wide per-row tolerance (`cost = "batch"`: prompts may trade layers, so the gates can
learn per-prompt depth; calibration then makes the *mean* realized fraction track each budget, and strict
mode still caps every request).

The cost, nesting and tracking terms are functions of the keep probabilities and are differentiated
exactly. The task terms (CE, KL, agreement) depend on which gates were sampled; their gradient comes from
one of two estimators (`TrainConfig.estimator`):

- *straight-through* ("st", the default): one Gumbel-sigmoid sample per row, hard 0/1 forward through the
  soft-masked model (`GatedModel.soft`, every layer computed), sigmoid gradient backward. Cheap per sample,
  but the gradient is the first-order effect of scaling a layer's update, which can rank layers badly for
  removing them (measured: training from a greedy-KL ranking made it worse, see docs/results/gates.md).
- *score function* ("score"): `samples` Bernoulli gate sets per row, each run by the real sparse runtime
  (skipped layers run nothing; no backward through the base model), and the REINFORCE gradient
  (task cost − leave-one-out mean of the other samples) · ∇ log p(gates). Unbiased for the expected task
  cost of the sets the gates sample, at the price of variance. With `sampler = "topk"` the layer sets are
  not independent Bernoulli draws but exactly the count inference keeps at the row's budget
  (baselines.kept_count, the count of the gates' exact mode and of the static baselines): a Plackett-Luce
  draw by keep-logit without replacement (Gumbel-top-k), scored by its ordered log-probability. The samples
  are then the deterministic top-k set and its swaps at the boundary, so the gradient compares the sets
  exact-mode inference can run, per prompt, not sets of random size the cost term weighs.

With `dense_at_full`, a row whose budget on an axis is 1.0 runs that axis dense in training, as at
inference (budget 1.0 is the dense model). Not here: the loop, data and dual ascent (train.py); the gate
network (gates.py); the pure loss terms (losses.py).
"""

from __future__ import annotations

import torch

from . import losses
from .decision import GateDecision


def objective(m, policy, ids, attn, ans_mask, teacher, pooled, b_hi, b_lo, tau, gen, cfg, lambdas, noise: float = 1.0,
              ref=None):
    """The unified objective on N examples, each at budgets b_hi and b_lo (N, 3), gate noise scaled by `noise`.
    `ref`: the policy as warm-started, whose layer ranking `cfg.anchor` holds each row near (losses.rank_anchor).

    ids/attn/ans_mask (N, T); teacher (N, T-1, V) dense log-probs; pooled (N, H) router input.
    Returns (loss, {term: value}, (E[layers] (2N,), E[heads] (2N,)), budgets (2N, 3), share of layers run).
    """
    c = policy.config
    n, k, L = ids.shape[0], c.router_layers, c.n_layers
    budgets = torch.cat([b_hi, b_lo])  # (2N, 3): rows [0, N) high, [N, 2N) low
    logits = policy(pooled.repeat(2, 1), budgets)
    p_layers = torch.sigmoid(logits.layers / noise)  # (2N, n_gate) keep probabilities under the scaled noise
    p_groups = torch.sigmoid(logits.groups[:, k:] / noise)  # (2N, L-k, G)
    task = _score if cfg.estimator == "score" else _straight_through
    task_loss, terms, share = task(m, policy, logits, ids, attn, ans_mask, teacher, budgets, tau, gen, cfg, noise)
    e_layers = (c.protected + p_layers.sum(-1)) / L  # (2N,) expected fraction of layers run
    e_heads = (k + p_groups.mean(-1).sum(-1)) / L  # (2N,) expected fraction of groups kept
    if cfg.cost == "batch":  # the mean spend of the batch against its budgets; each row within row_tol
        pen_l = losses.batch_cost_hinge(e_layers, budgets[:, 0], cfg.tol, cfg.row_tol)
        pen_h = losses.batch_cost_hinge(e_heads, budgets[:, 1], cfg.tol, cfg.row_tol)
    else:  # every row against its own budget
        pen_l = losses.cost_hinge(e_layers, budgets[:, 0], cfg.tol).mean()
        pen_h = losses.cost_hinge(e_heads, budgets[:, 1], cfg.tol).mean()
    track = (e_layers - budgets[:, 0]).pow(2).mean() + (e_heads - budgets[:, 1]).pow(2).mean()
    mono = losses.nesting(p_layers[n:], p_layers[:n]) + losses.nesting(p_groups[n:], p_groups[:n])
    loss = task_loss + cfg.mono * mono + lambdas["layers"] * pen_l + lambdas["heads"] * pen_h + cfg.track * track
    terms = {"loss": loss, **terms, "mono": mono, "pen_layers": pen_l, "pen_heads": pen_h, "track": track}
    if ref is not None and cfg.anchor > 0:
        with torch.no_grad():
            ref_layers = ref(pooled.repeat(2, 1), budgets).layers  # (2N, n_gate)
        anchor = losses.rank_anchor(logits.layers, ref_layers)
        terms["loss"] = loss = loss + cfg.anchor * anchor
        terms["anchor"] = anchor
    return loss, terms, (e_layers.detach(), e_heads.detach()), budgets, share


def _straight_through(m, policy, logits, ids, attn, ans_mask, teacher, budgets, tau, gen, cfg, noise):
    c = policy.config
    n, k = ids.shape[0], c.router_layers
    layer_gates = torch.ones(2 * n, c.n_layers)
    layer_gates[:, list(c.gateable)] = losses.gumbel_sigmoid(logits.layers, tau, generator=gen, noise=noise)
    group_gates = losses.gumbel_sigmoid(logits.groups, tau, generator=gen, noise=noise)  # (2N, L, G)
    group_gates = torch.cat([torch.ones_like(group_gates[:, :k]), group_gates[:, k:]], 1)
    if cfg.dense_at_full:
        layer_gates = torch.where(budgets[:, :1] >= 1, torch.ones_like(layer_gates), layer_gates)
        group_gates = torch.where(budgets[:, 1, None, None] >= 1, torch.ones_like(group_gates), group_gates)
    with m.soft(layer_gates, group_gates):
        s_logits = m.hf(input_ids=ids.repeat(2, 1), attention_mask=attn.repeat(2, 1), use_cache=False).logits
    s_logits = s_logits[:, :-1]  # (2N, T-1, V) predicts tokens 1..T-1
    mask = ans_mask[:, 1:].repeat(2, 1)  # (2N, T-1)
    ce = losses.token_ce(s_logits, ids[:, 1:].repeat(2, 1), mask)
    kl = (losses.token_kl(teacher, s_logits[:n], mask[:n]) + losses.token_kl(teacher, s_logits[n:], mask[n:])) / 2
    agree = losses.agreement(s_logits[n:], s_logits[:n], mask[:n])
    loss = cfg.ce * ce + cfg.kl * kl + cfg.agree * agree
    return loss, {"ce": ce, "kl": kl, "agree": agree}, float(layer_gates.detach().mean())


def _score(m, policy, logits, ids, attn, ans_mask, teacher, budgets, tau, gen, cfg, noise, chunk: int = 8):
    c = policy.config
    n, k, S = ids.shape[0], c.router_layers, cfg.samples
    R = 2 * n * S  # rows: each (example, budget) row repeated S times, consecutively
    b = budgets.repeat_interleave(S, 0)  # (R, 3)
    p_l = torch.sigmoid(logits.layers / noise).repeat_interleave(S, 0)  # (R, n_gate), with gradient
    p_g = torch.sigmoid(logits.groups / noise).repeat_interleave(S, 0)  # (R, L, G)
    if cfg.sampler == "topk":  # exactly the kept count at each row's budget, drawn by keep-logit
        from .baselines import kept_count

        k_l = torch.tensor([kept_count(c.n_layers, float(x)) - c.protected for x in b[:, 0]]).clamp(0, p_l.shape[1])
        s_l = logits.layers.repeat_interleave(S, 0) / noise  # (R, n_gate) Plackett-Luce scores, with gradient
        z_l, drawn = losses.gumbel_topk(s_l.detach(), k_l, gen)  # (R, n_gate), (R, n_gate)
    else:
        z_l = torch.bernoulli(p_l.detach(), generator=gen)  # (R, n_gate) sampled keep-gates
    z_g = torch.bernoulli(p_g.detach(), generator=gen)  # (R, L, G)
    z_g[:, :k] = 1  # router layers run densely
    free_l, free_g = torch.ones(R, 1), torch.ones(R, 1, 1)  # 1 where the axis is sampled, 0 where forced dense
    if cfg.dense_at_full:
        free_l, free_g = (b[:, :1] < 1).float(), (b[:, 1, None, None] < 1).float()
        z_l = torch.maximum(z_l, 1 - free_l)
        z_g = torch.maximum(z_g, 1 - free_g)
    best = p_g.detach().argmax(-1, keepdim=True)  # (R, L, 1): a kept layer keeps at least its likeliest group
    z_g.scatter_(-1, best, z_g.gather(-1, best).maximum((z_g.sum(-1, keepdim=True) == 0).float()))
    layers = torch.ones(R, c.n_layers, dtype=torch.bool)
    layers[:, list(c.gateable)] = z_l.bool()
    hi, lo = slice(0, n * S), slice(n * S, R)  # the low-budget row of sample s agrees with the high one's
    decisions = [GateDecision(layers=tuple(lr.tolist()), kv_groups=tuple(map(tuple, gr.bool().tolist())))
                 for lr, gr in zip(layers, z_g)]
    ex = torch.arange(2 * n).remainder(n).repeat_interleave(S)  # (R,) example of each row
    mask = ans_mask[:, 1:]  # (N, T-1) positions that predict an answer token
    keep = losses.logits_keep(mask)  # (N, T)
    # Only answer positions go through the LM head and the vocab-wide ops, packed row-major: (M, V). Each
    # position's numbers equal those of computing all positions (R, T-1, V): bit for bit with the CPU bf16
    # kernels measured here (row-invariant), to rounding where a kernel is not.
    t_logp = [teacher[e][mask[e].bool()] for e in range(n)]  # (m_e, V) teacher log-probs per example
    t_p = [t.exp() for t in t_logp]
    ends = mask.sum(-1).long()[ex].cumsum(0).tolist()  # packed end of each row's positions
    seg = [slice(e - len(t_logp[x]), e) for e, x in zip(ends, ex.tolist())]
    with torch.no_grad():
        s_logp = torch.empty(ends[-1], teacher.shape[-1])  # (M, V) gated log-probs, every row's answer positions
        for i in range(0, R, chunk):  # the real sparse runtime: skipped layers and groups run nothing
            rows = ex[i : i + chunk]
            out = m.forward(ids[rows], attn[rows], decisions=decisions[i : i + chunk], logits_to_keep=keep[rows])
            s_logp[seg[i].start : seg[min(i + chunk, R) - 1].stop] = torch.log_softmax(out.float(), -1)
        rmask = mask[ex]  # (R, T-1)
        kl = losses.row_mean(torch.cat([losses.position_kl(t_logp[x], s_logp[sl], t_p[x])
                                         for x, sl in zip(ex.tolist(), seg)]), rmask)  # (R,)
        ce = losses.row_mean(losses.nll(s_logp, ids[ex, 1:][rmask.bool()]), rmask)  # (R,)
        half = seg[n * S].start  # packed rows [0, half) are high-budget; the low row of sample s follows its high one
        agree = torch.zeros(R)
        agree[lo] = losses.row_mean(losses.position_kl(s_logp[:half], s_logp[half:]), rmask[hi])
    cost = cfg.kl * kl + cfg.ce * ce + cfg.agree * agree  # (R,) task cost of each sampled gate set
    per = cost.view(2 * n, S)
    advantage = per - (per.sum(-1, keepdim=True) - per) / max(1, S - 1)  # (2N, S) leave-one-out baseline
    if cfg.sampler == "topk":  # a row keeping all or none of its layers had no choice: no log-probability
        logp = losses.plackett_luce_logp(s_l, drawn, k_l) * free_l[:, 0] * ((k_l > 0) & (k_l < len(c.gateable)))  # (R,)
    else:
        logp = ((z_l * p_l.clamp_min(1e-6).log() + (1 - z_l) * (1 - p_l).clamp_min(1e-6).log()) * free_l).sum(-1)  # (R,)
    g_logp = (z_g * p_g.clamp_min(1e-6).log() + (1 - z_g) * (1 - p_g).clamp_min(1e-6).log()) * free_g  # (R, L, G)
    g_logp = g_logp[:, k:] * layers[:, k:, None].float()  # groups of skipped layers change nothing: left out
    surrogate = (advantage.reshape(-1) * (logp + g_logp.sum((-1, -2)))).mean()
    terms = {"ce": ce.mean(), "kl": kl.mean(), "agree": agree[lo].mean(), "kl_hi": kl[hi].mean(), "pg": surrogate}
    return surrogate, terms, float(layers.float().mean())
