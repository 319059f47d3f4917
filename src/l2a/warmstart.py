"""Warm starts: training begins at a static layer ranking and refines it per input and budget.

- `block-influence`: ShortGPT's Block Influence on the calibration text.
- `greedy-kl`: the greedy removal order under teacher-forced KL to dense (swap.greedy_kl_order), searched on
  held-out task examples (plus `warm_text` second-source examples, mix.py). Its z-scores, times
  `warm_scale`, are added to the keep-logit bias: every prompt starts from the same set.
- `greedy-kl` with `warm_domains`: one order per source, searched on the task's held-out examples and on
  `warm_text` second-source examples apart. The router's layer outputs are then fit (ridge regression on its
  initial features of training prompts) so that each prompt starts from its own source's order: an
  input-aware warm start, for sources whose cheap layers differ (GSM8K's early layers against the middle
  block multiple-choice prompts can lose; scripts/set_kl.py).
- `greedy-kl` with `warm_refine` b: the set at budget b (baselines.kept_count's count) is searched further under
  the same KL on the same pairs, because greedy's path misses better deep sets: the better of the greedy
  order's set and the best block start (greedy's first removals plus a contiguous block, swap.block_start) is
  refined by single-layer swaps (swap.swap_refine), and the order is rebuilt around the result
  (swap.nested_order): the gates start from the refined set at b and from subsets of it at every higher
  budget. With several budgets (deepest first) each later set is searched only among the layers of the one
  before and the order is rebuilt around each in turn, so every refined set is a prefix of it: the training
  starts from the searched set at each of those budgets, not from greedy's subset of the deepest one. With
  warm_domains each source's order is refined on its own pairs.

The searched orders are kept in `out/warm_start.json`, so a resumed run does not search again; each search
(greedy's, then each refinement) is kept as it ends, so an interrupted run resumes at the next one.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

WARM_STARTS = ("block-influence", "greedy-kl")
WARM_PAIRS = 16  # greedy-kl: held-out training examples searched on by default (TrainConfig.warm_pairs)
RIDGE = 0.01  # warm_domains: ridge penalty on the router's output weights, relative to the features' mean variance
FIT_BUDGET = (0.7, 1.0)  # warm_domains: the (b_layer, b_head) whose router features the fit reads


@torch.no_grad()
def warm_start(m, policy, cfg, held_out: list, pooled: torch.Tensor | None = None,
               source: torch.Tensor | None = None) -> dict:
    """Apply cfg.warm_start to `policy`'s layer logits. `held_out`: the task's [(prompt, answer)] searched on;
    `pooled` (N, H) and `source` (N,) (0 task, 1 second source): training prompts the warm_domains fit reads.
    Returns what the summary keeps: {"warm_start_order": task order} (greedy-kl), plus "warm_start_second_order"
    and "warm_start_fit" with warm_domains and "warm_start_refined" (the swap search, per order) with
    warm_refine; {} for block-influence."""
    from .static import Calibration, stats_for

    gate = list(policy.config.gateable)
    if cfg.warm_start == "block-influence":
        score = torch.tensor(stats_for(m, Calibration(path=cfg.data)).bi)[gate]  # (n_gate,)
        policy.out.bias[: len(gate)] += cfg.warm_scale * _z(score)
        return {}
    orders, refined = _orders(m, policy, cfg, held_out)
    refined = {"warm_start_refined": refined} if refined else {}
    z = torch.stack([_z(torch.tensor([float(o.index(j)) for j in gate])) for o in orders])  # (S, n_gate)
    if not cfg.warm_domains:
        policy.out.bias[: len(gate)] += cfg.warm_scale * z[0]
        return {"warm_start_order": orders[0], **refined}
    fit = fit_sources(policy, pooled, source, cfg.warm_scale * z)
    return {"warm_start_order": orders[0], "warm_start_second_order": orders[1], "warm_start_fit": fit, **refined}


def _z(score: torch.Tensor) -> torch.Tensor:
    """Later removal = more important: z-scored over the gateable layers."""
    return (score - score.mean()) / score.std().clamp_min(1e-6)


def _orders(m, policy, cfg, held_out: list) -> tuple[list[list[int]], list[dict]]:
    """([task order] or, with warm_domains, [task order, second-source order]; the swap searches of
    warm_refine, [] without): least important first, searched down to cfg.layer_min of the layers, read back
    from out/warm_start.json when a run already searched."""
    from .baselines import kept_count
    from .mix import search_pairs
    from .swap import SetKL, greedy_kl_order, nested_order, refine

    cache = Path(cfg.out) / "warm_start.json"
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    if "order" in saved:
        if not cfg.warm_domains or "second_order" in saved:
            return [saved["order"], *([saved["second_order"]] if cfg.warm_domains else [])], saved.get("refined", [])
    gate = list(policy.config.gateable)
    pad = m.tokenizer.pad_token_id if m.tokenizer.pad_token_id is not None else 0
    n_remove = max(0, len(gate) + policy.config.protected - math.ceil(cfg.layer_min * policy.config.n_layers))
    second = search_pairs(cfg, m.tokenizer)
    searched = [held_out, second] if cfg.warm_domains else [held_out + second]
    greedy = _searched(cache, "greedy_orders", lambda: [greedy_kl_order(m, pairs, gate, n_remove, pad_id=pad)
                                                        for pairs in searched])
    orders, refined, n = list(greedy), [], policy.config.n_layers
    for k, pairs in enumerate(searched):
        kl = functools.cache(lambda pairs=pairs: SetKL(m, pairs, pad))  # built once, only when a search runs
        inside = gate
        for b in cfg.warm_refine:  # deepest first: each set is searched inside the one before, so they nest
            r = min(len(inside), n - kept_count(n, b))  # layers the budget removes, as the baselines count
            found = _searched(cache, f"refined_{k}_{b}", lambda: refine(kl(), orders[k], r, inside, blocks=True))
            orders[k] = nested_order(orders[k], found["removed"])
            refined.append({"budget": b, **found})
            inside = found["removed"]
    cache.write_text(json.dumps({"warm_start": cfg.warm_start, "pairs": len(held_out), "order": orders[0],
                                 **({"second_order": orders[1]} if cfg.warm_domains else {}),
                                 **({"greedy_order": greedy[0], "refined": refined} if refined else {})}) + "\n")
    return orders, refined


def _searched(cache: Path, key: str, search):
    """search()'s result, kept under `key` in the (not yet final) cache file beside the searches before it, so
    an interrupted run resumes at the first search it had not finished."""
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in saved:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({**saved, key: search()}) + "\n")
    return json.loads(cache.read_text())[key]


@torch.no_grad()
def fit_sources(policy, pooled: torch.Tensor, source: torch.Tensor, shift: torch.Tensor) -> dict:
    """Fit the router's layer outputs so a prompt of source s starts at its current logits plus shift[s].

    pooled (N, H) training prompts' router inputs, source (N,) their source index, shift (S, n_gate). The
    output weights and biases of the layer gates are the ridge solution from the router's features at
    FIT_BUDGET to those targets (the FiLM and budget-bias terms start near zero, so the fit holds at every
    budget). Returns how well it took: per source, the share of its fit prompts whose lowest-logit
    quarter of the layers is the target's."""
    n_gate = shift.shape[1]
    e = policy.budget(torch.tensor([FIT_BUDGET]))  # (1, E)
    gamma, beta = policy.film(e).chunk(2, -1)  # (1, W) each
    h = F.gelu(policy.features(pooled) * (1 + gamma) + beta)  # (N, W)
    base = policy.out(h)[:, :n_gate]  # (N, n_gate) the logits before the fit
    y = base.mean(0) + shift[source]  # (N, n_gate) targets
    hm, ym = h.mean(0), y.mean(0)
    hc, yc = h - hm, y - ym
    gram = hc.T @ hc  # (W, W)
    ridge = RIDGE * gram.diagonal().mean() * torch.eye(len(gram))
    w = torch.linalg.solve(gram + ridge, hc.T @ yc)  # (W, n_gate)
    policy.out.weight[:n_gate] = w.T
    policy.out.bias[:n_gate] = ym - hm @ w
    got = policy.out(h)[:, :n_gate]  # (N, n_gate)
    k = max(1, n_gate // 4)
    low = lambda x: x.topk(k, -1, largest=False).indices.sort(-1).values  # noqa: E731  (N, k) lowest logits
    hit = (low(got) == low(y)).all(-1).float()  # (N,)
    return {"ridge": RIDGE, "agree": {int(s): round(hit[source == s].mean().item(), 3) for s in source.unique()},
            "residual": round((got - y).pow(2).mean().sqrt().item(), 3), "shift_std": round(shift.std().item(), 3)}
