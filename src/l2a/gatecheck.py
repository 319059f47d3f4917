"""`l2a check-gates`: the measurable properties of a trained gate set, on held-out GSM8K prompts.

- budget tracking: mean realized layer fraction per requested fraction (threshold mode), and the
  largest realized fraction in strict mode (must never exceed the request);
- nesting: share of (prompt, budget pair)s whose kept layers at the lower budget are a subset of those
  at the higher one;
- input-awareness: distinct decisions across prompts at one budget, and KL against the budget-only
  ablation at equal realized compute;
- quality: teacher-forced KL(dense ‖ gated) on GSM8K test chains of thought at ~30% realized layer
  sparsity, against the static layer-removal baselines (Block Influence, angular distance) at the same
  sparsity.
All numbers are measured on the model; nothing here is modeled. Not here: accuracy (evaluate.py).
"""

from __future__ import annotations

import math


import torch

from .budget import Budget
from .decision import GateDecision

TRACK_GRID = tuple(round(0.5 + 0.05 * i, 2) for i in range(11))  # 0.50 .. 1.00


def _prompts_and_answers(m, data, limit):
    from .data import load_math
    from .tasks import math_prompt, solution_ids

    rows, source = load_math(data, split="test")
    rows = rows[:limit]
    tok = m.tokenizer
    pairs = []
    for r in rows:
        pairs.append((math_prompt(tok, r["question"]), solution_ids(tok, r["answer"])))
    return pairs, source


def _decide_all(m, policy, prompts, budget: Budget, mode="threshold", batch=16) -> list[GateDecision]:
    from .scoring import left_pad

    out = []
    pad = m.tokenizer.pad_token_id or 0
    with m.using(policy):
        for i in range(0, len(prompts), batch):
            ids, mask = left_pad(prompts[i : i + batch], pad)
            out += m.decide(ids, budget, attention_mask=mask, mode=mode)
    return out


@torch.no_grad()
def chain_kl(m, pairs, decisions: list[GateDecision], max_len=320, batch=8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per chain, each row under its own decision: (KL(dense ‖ gated) summed over its answer tokens (N,),
    answer tokens (N,)). Only answer positions reach the LM head."""
    from .losses import logits_keep, position_kl, row_sum
    from .examples import example_batch

    pad = m.tokenizer.pad_token_id or 0
    sums, counts = [], []
    for i in range(0, len(pairs), batch):
        chunk = [(p, a[: max(1, max_len - len(p))]) for p, a in pairs[i : i + batch]]
        ids, attn, _, ans = example_batch(chunk, pad)  # right-padded (N, T)
        mask = ans[:, 1:]  # (N, T-1) positions predicting an answer token
        keep = logits_keep(mask)
        dense = torch.log_softmax(m.forward(ids, attn, logits_to_keep=keep).float(), -1)  # (M, V)
        gated = m.forward(ids, attn, decisions=decisions[i : i + batch], logits_to_keep=keep)  # (M, V)
        sums.append(row_sum(position_kl(dense, torch.log_softmax(gated.float(), -1)), mask))
        counts.append(mask.sum(-1))
    return torch.cat(sums), torch.cat(counts)


def _corr(x, y) -> float | None:
    """Pearson correlation of two equal-length sequences; None when either is constant."""
    t = torch.tensor([list(x), list(y)], dtype=torch.double)  # (2, N)
    if (t.std(1) == 0).any():
        return None
    return float(torch.corrcoef(t)[0, 1])


def teacher_forced_kl(m, pairs, decisions: list[GateDecision], max_len=320, batch=8) -> float:
    """Mean over answer tokens of KL(dense ‖ gated), each row under its own decision."""
    sums, counts = chain_kl(m, pairs, decisions, max_len, batch)
    return float(sums.sum() / counts.sum().clamp_min(1))


def reduction_ci(ours: torch.Tensor, theirs: torch.Tensor, n_resamples=2000, seed=0, level=0.95) -> list[float]:
    """Percentile bootstrap over chains (paired) of 1 − Σ ours / Σ theirs: the token-mean KL reduction of
    one method against another on the same chains (per-chain KL sums (N,); the token counts cancel)."""
    import numpy as np

    a, b = ours.double().numpy(), theirs.double().numpy()
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_resamples, a.size))  # (R, N)
    red = 1 - a[idx].sum(1) / b[idx].sum(1)
    q = (1 - level) / 2
    return [float(np.quantile(red, q)), float(np.quantile(red, 1 - q))]


def at_layers(sums_at, f: float, L: int) -> torch.Tensor:
    """Per-chain KL sums of a fixed-count method interpolated at a fractional layer count f:
    `sums_at(c)` gives them at c kept layers; linear between floor(f) and floor(f) + 1."""
    c0 = min(L - 1, math.floor(f + 1e-9))
    w, s0 = f - c0, sums_at(c0)
    return s0 if w <= 1e-9 else s0 + w * (sums_at(c0 + 1) - s0)


WARM = "greedy-kl (warm start, static)"


def swap_headroom(m, pairs, order: list[int], count: int, width: int = 3) -> dict:
    """How much choosing layers per prompt could gain at all, near a good static set: the greedy order's
    top-`count` set and its width² single swaps at the boundary (one of the next `width` layers it would
    drop goes, one of the last `width` it dropped comes back). Teacher-forced KL of (a) the greedy set,
    (b) the best one of these sets for every chain (a static choice), (c) each chain's own best set (an
    oracle chosen on the test chains themselves: an upper bound on what a router choosing among these
    sets per prompt could gain over (b))."""
    L = m.n_layers
    removed = order[: L - count]
    drops = [set(removed)] + [(set(removed) - {b}) | {k} for k in order[L - count : L - count + width] for b in removed[-width:]]
    per_set, n_tok = [], None
    for drop in drops:
        sums, n_tok = chain_kl(m, pairs, [GateDecision.dropping(L, drop)] * len(pairs))
        per_set.append(sums)
    kl = torch.stack(per_set)  # (S, N) per-chain KL sums of each set
    total = float(n_tok.sum())
    best_static = float(kl.sum(1).min()) / total
    oracle = float(kl.min(0).values.sum()) / total
    return {"layers_kept": count, "sets": len(drops), "greedy": float(kl[0].sum()) / total, "best_static": best_static,
            "per_chain_oracle": oracle, "oracle_gain_over_best_static": 1 - oracle / best_static}


def depth_oracle(sums: torch.Tensor, n_tok: torch.Tensor, counts: list[int], target: float) -> dict:
    """How much giving each prompt its own layer *count* along one nested order could gain at all.
    `sums` (K, N): per-chain KL sums with `counts[k]` layers kept; `n_tok` (N,): answer tokens per chain.
    Each chain takes the count minimising its KL + λ · tokens · count; λ is swept, and the two allocations
    around a token-weighted mean count of `target` (the same modeled compute as `target` layers for every
    chain) are mixed to meet it exactly. Chosen on the test chains themselves: an upper bound."""
    S, w = sums.double(), n_tok.double()  # (K, N), (N,)
    c = torch.tensor(counts, dtype=torch.double)  # (K,)
    total, rows = float(w.sum()), torch.arange(S.shape[1])
    pts = set()  # (token-weighted mean count, mean KL) of each λ's allocation: the lower convex hull
    for lam in torch.logspace(-5, 3, 801, dtype=torch.double):
        pick = (S + lam * c[:, None] * w[None]).argmin(0)  # (N,) each chain's count index
        pts.add((float((c[pick] * w).sum()) / total, float(S[pick, rows].sum()) / total))
    lo = max((p for p in pts if p[0] <= target + 1e-9), default=None)
    hi = min((p for p in pts if p[0] >= target - 1e-9), default=None)
    if lo is None or hi is None:
        raise ValueError(f"target {target} outside the counts {counts[0]}..{counts[-1]}")
    oracle = lo[1] if hi[0] - lo[0] < 1e-9 else lo[1] + (target - lo[0]) / (hi[0] - lo[0]) * (hi[1] - lo[1])
    k = min(range(len(counts)), key=lambda i: abs(counts[i] - target))
    fixed = float(S[k].sum()) / total if abs(counts[k] - target) < 1e-9 else None
    return {"counts": [counts[0], counts[-1]], "target": target, "fixed": fixed, "per_chain_oracle": oracle,
            "oracle_gain_over_fixed": None if fixed is None else 1 - oracle / fixed}


def mix(T: torch.Tensor, first: int, x: torch.Tensor) -> torch.Tensor:
    """(N,) values of T (K, N), tabulated at the contiguous grid first, first + 1, ..., read at fractional
    points x (N,): each column mixes its two grid neighbours linearly (as `at_layers`)."""
    i0 = (x.floor().long() - first).clamp(0, T.shape[0] - 2)  # (N,)
    frac = x - (i0 + first)
    cols = torch.arange(T.shape[1])
    return T[i0, cols] * (1 - frac) + T[i0 + 1, cols] * frac


def _mixed_kl(S: torch.Tensor, w: torch.Tensor, counts: list[int], k: torch.Tensor, rows: torch.Tensor) -> float:
    """Token-mean KL of chains `rows` keeping fractional counts k (N,). S (K, N) per-chain KL sums at
    `counts` (contiguous), w (N,) tokens per chain."""
    return float(mix(S, counts[0], k)[rows].sum() / w[rows].sum())


def length_rule(sums: torch.Tensor, n_tok: torch.Tensor, counts: list[int], target: float, prompt_lens,
                alphas=tuple(a / 4 for a in range(13)), repeats: int = 20, seed: int = 0) -> dict:
    """Depth by prompt length alone, a prompt feature any router can read: chain i keeps target + α·z_i
    layers (z_i = minus its prompt length, standardised: shorter prompts get more), shifted so that the
    token-weighted mean count is `target` (the modeled compute of `target` layers for every chain), clipped
    to `counts`. α is chosen on a random half of the chains and scored on the other half (`repeats` times);
    the gain is against `target` layers for every chain on the same half."""
    S, w = sums.double(), n_tok.double()  # (K, N), (N,)
    lens = torch.as_tensor(prompt_lens, dtype=torch.double)  # (N,)
    lo, hi = float(counts[0]), float(counts[-1])

    def alloc(alpha: float, rows) -> torch.Tensor:
        z = -(lens - lens[rows].mean()) / lens[rows].std().clamp_min(1e-9)  # (N,)
        k = (target + alpha * z).clamp(lo, hi)
        for _ in range(60):  # shift to the token-weighted target on `rows` (clipping can move it)
            k = (k + target - float((k[rows] * w[rows]).sum() / w[rows].sum())).clamp(lo, hi)
        return k

    def kl(alpha: float, rows) -> float:
        return _mixed_kl(S, w, counts, alloc(alpha, rows), rows)

    N = S.shape[1]
    g = torch.Generator().manual_seed(seed)
    gains = []
    for _ in range(repeats):
        perm = torch.randperm(N, generator=g)
        fit, test = perm[: N // 2], perm[N // 2 :]
        alpha = min(alphas, key=lambda a: kl(a, fit))
        gains.append(1 - kl(alpha, test) / kl(0.0, test))
    everyone = torch.arange(N)
    alpha = min(alphas, key=lambda a: kl(a, everyone))
    return {"alpha_in_sample": alpha, "in_sample": kl(alpha, everyone), "fixed": kl(0.0, everyone),
            "cv_gain_mean": sum(gains) / len(gains), "cv_gain_min": min(gains), "cv_gain_max": max(gains),
            "repeats": repeats}


def check_gates(m, data=None, limit=200, kl_limit=100, kl_fraction=0.7, ablation=None, progress=True,
                calibration=None, warm_order=None, headroom=False, static=True) -> dict:
    """Measure tracking, nesting, input-awareness and KL for `m.policy` (and an ablation policy).
    `static=False` leaves out the static baselines and strict mode's KL (the ablation comparison alone: a
    third of the passes, for many chains).
    `warm_order`: the greedy-kl ranking the gates were warm-started from (least important first),
    measured as one more static set at the same count (what training started from); with `headroom`,
    also the per-prompt headroom around it (`swap_headroom`)."""
    from tqdm import tqdm

    from .baselines import make_method

    if m.policy is None:
        raise ValueError("no gates loaded: pass --gates DIR or use a model with shipped gates")
    pairs, source = _prompts_and_answers(m, data, limit)
    prompts = [p for p, _ in pairs]
    L = m.n_layers
    res: dict = {"data_source": source, "n_prompts": len(prompts), "n_kl": min(kl_limit, len(pairs))}

    # tracking + nesting (threshold), strict never above
    by_budget, track = {}, []
    for b in tqdm(TRACK_GRID, desc="tracking", disable=not progress):
        ds = _decide_all(m, m.policy, prompts, Budget(layers=b))
        strict = _decide_all(m, m.policy, prompts, Budget(layers=b), mode="strict")
        by_budget[b] = ds
        real = [d.layer_fraction for d in ds]
        track.append({
            "requested": b, "realized_mean": sum(real) / len(real), "realized_min": min(real),
            "realized_max": max(real), "distinct_decisions": len({d.layers for d in ds}),
            "length_corr": _corr([len(p) for p in prompts], real),  # do longer prompts get more layers?
            "strict_max": max(d.layer_fraction for d in strict),
            "strict_mean": sum(d.layer_fraction for d in strict) / len(strict),
        })
    res["tracking"] = track
    res["tracking_mean_abs_error"] = sum(abs(t["realized_mean"] - t["requested"]) for t in track) / len(track)
    res["strict_ever_exceeds"] = any(t["strict_max"] > t["requested"] + 1e-9 for t in track)
    pairs_ok = pairs_all = 0
    for i, lo in enumerate(TRACK_GRID):
        for hi in TRACK_GRID[i + 1 :]:
            for d_lo, d_hi in zip(by_budget[lo], by_budget[hi]):
                pairs_all += 1
                pairs_ok += all(h or not x for x, h in zip(d_lo.layers, d_hi.layers))
    res["nested_share"] = pairs_ok / pairs_all

    # KL at ~ (1 - kl_fraction) sparsity: l2a (threshold and strict) vs static baselines at the same count
    kl_pairs = pairs[:kl_limit]
    kl_prompts = prompts[:kl_limit]
    kl, chains = {}, {}  # chains: (method, layers kept) -> per-chain KL sums of the fixed-count set
    l2a_sums, n_tok = {}, None
    modes = ("threshold", "strict") if static else ("threshold",)
    for mode in modes:
        ds = _decide_all(m, m.policy, kl_prompts, Budget(layers=kl_fraction), mode=mode)
        l2a_sums[mode], n_tok = chain_kl(m, kl_pairs, ds)
        frac = torch.tensor([d.layer_fraction for d in ds], dtype=torch.double)  # (N,)
        kl[f"l2a-{mode}"] = {"kl": float(l2a_sums[mode].sum() / n_tok.sum()), "realized_layers": float(frac.mean()),
                             # weighted by each chain's answer tokens: the modeled compute of scoring them
                             "realized_layers_token_weighted": float((frac * n_tok).sum() / n_tok.sum())}
    statics = {name: make_method(name, calibration=calibration) for name in ("block-influence", "angular", "even-spaced")}
    abl_pooled = None
    if ablation is not None:
        from .examples import pooled_prompts

        abl_pooled = pooled_prompts(m, ablation, kl_prompts, m.tokenizer.pad_token_id or 0)

    def fixed_count(name: str, count: int) -> list[GateDecision]:
        """The decisions of fixed-count method `name` keeping `count` layers, one per KL chain."""
        if name == WARM:  # the greedy order: drop its first L - count layers
            return [GateDecision.dropping(L, warm_order[: L - count])] * len(kl_pairs)
        if name == "ablation":  # the budget-only gates' own top-count layers at budget count / L
            from .selection import topk_decisions

            return topk_decisions(ablation, abl_pooled, count / L)
        return statics[name].decide(m, None, None, [Budget(layers=count / L)] * len(kl_pairs))

    def sums_at(name: str, count: int) -> torch.Tensor:
        """Per-chain KL sums (N,) of fixed-count method `name` keeping `count` layers (memoised)."""
        if (name, count) not in chains:
            chains[name, count] = chain_kl(m, kl_pairs, fixed_count(name, count))[0]
        return chains[name, count]

    def mean(sums: torch.Tensor) -> float:
        return float(sums.sum() / n_tok.sum())

    from .baselines import kept_count

    k = kept_count(L, kl_fraction)
    if static:
        for name in (*statics, *((WARM,) if warm_order else ())):
            kl[name] = {"kl": mean(sums_at(name, k)), "realized_layers": k / L}
        static_best = min(kl["block-influence"]["kl"], kl["angular"]["kl"])
        res["kl_reduction_vs_best_static"] = {mode: 1 - kl[f"l2a-{mode}"]["kl"] / static_best for mode in modes}
        # Equal realized compute: each fixed-count method's per-chain KL interpolated between its neighbouring
        # layer counts at the fraction l2a realized in each mode (l2a's threshold sets keep a varying number per
        # prompt), with a paired bootstrap CI over chains of l2a's reduction against the best of BI/angular.
        equal, reduction, ci = {}, {}, {}
        for mode in modes:
            f = kl[f"l2a-{mode}"]["realized_layers"] * L
            interp = {name: at_layers(lambda c, nm=name: sums_at(nm, c), f, L)
                      for name in ("block-influence", "angular") + ((WARM,) if warm_order else ())}
            equal[mode] = {name: mean(v) for name, v in interp.items()}
            best = min(("block-influence", "angular"), key=lambda nm: equal[mode][nm])
            reduction[mode] = 1 - kl[f"l2a-{mode}"]["kl"] / equal[mode][best]
            ci[mode] = reduction_ci(l2a_sums[mode], interp[best])
        res["kl_static_at_equal_layers"] = equal
        res["kl_reduction_vs_best_static_equal_layers"] = reduction
        res["kl_reduction_vs_best_static_equal_layers_ci95"] = ci
    if ablation is not None:
        # The budget-only ablation the same way (it keeps the same layers for every prompt): its own top-c
        # layers at c = floor(f) and floor(f) + 1, interpolated per chain at l2a's realized count f (threshold).
        f = kl["l2a-threshold"]["realized_layers"] * L
        abl = at_layers(lambda c: sums_at("ablation", c), f, L)
        c0 = min(L - 1, math.floor(f + 1e-9))
        kl["ablation"] = {"kl": mean(abl), "realized_layers": f / L, "layers_kept": [c0, c0 + 1],
                          "distinct_decisions": len({d.layers for d in fixed_count("ablation", c0)})}
        res["kl_reduction_vs_ablation"] = {"threshold": 1 - kl["l2a-threshold"]["kl"] / kl["ablation"]["kl"],
                                           "ci95": reduction_ci(l2a_sums["threshold"], abl)}
        # Per-prompt depth can move compute between chains of different lengths: the same comparison at l2a's
        # token-weighted layer count (the modeled compute of the answer tokens); both are reported.
        f_w = kl["l2a-threshold"]["realized_layers_token_weighted"] * L
        abl_w = at_layers(lambda c: sums_at("ablation", c), f_w, L)
        res["kl_reduction_vs_ablation"]["token_weighted"] = {
            "realized_layers": f_w / L, "ablation_kl": mean(abl_w),
            "reduction": 1 - kl["l2a-threshold"]["kl"] / mean(abl_w), "ci95": reduction_ci(l2a_sums["threshold"], abl_w)}
    res["kl"] = kl
    if headroom and warm_order:
        res["headroom"] = swap_headroom(m, kl_pairs, warm_order, k)
        counts = list(range(max(L - len(warm_order), k - 3), min(L, k + 3) + 1))
        S = torch.stack([sums_at(WARM, c) for c in counts])  # (K, N)
        res["depth_headroom"] = depth_oracle(S, n_tok, counts, k)
        res["depth_by_prompt_length"] = length_rule(S, n_tok, counts, k, [len(p) for p in kl_prompts])
    res["n_layers"] = L
    return res


def render(res: dict) -> str:
    """Markdown summary of a check_gates result."""
    lines = ["| requested | realized mean (min–max) | strict max | distinct decisions | corr(prompt length, layers) |",
             "|---|---|---|---|---|"]
    for t in res["tracking"]:
        r = t.get("length_corr")
        lines.append(f"| {t['requested']:.2f} | {t['realized_mean']:.3f} ({t['realized_min']:.2f}–{t['realized_max']:.2f}) "
                     f"| {t['strict_max']:.3f} | {t['distinct_decisions']} | {'–' if r is None else f'{r:+.2f}'} |")
    lines += ["", f"tracking mean |realized − requested|: {res['tracking_mean_abs_error']:.3f}; "
              f"strict ever exceeds: {res['strict_ever_exceeds']}; nested pairs: {100 * res['nested_share']:.2f}%", "",
              "| method | teacher-forced KL | realized layers |", "|---|---|---|"]
    for name, v in res["kl"].items():
        lines.append(f"| {name} | {v['kl']:.4f} | {v['realized_layers']:.3f} |")
    if "kl_reduction_vs_best_static" in res:
        red = res["kl_reduction_vs_best_static"]
        lines.append(f"\nKL reduction vs best static (BI/angular): threshold {100 * red['threshold']:.1f}%, strict {100 * red['strict']:.1f}%")
    if "kl_static_at_equal_layers" in res:
        eq, red = res["kl_static_at_equal_layers"], res["kl_reduction_vs_best_static_equal_layers"]
        ci = res.get("kl_reduction_vs_best_static_equal_layers_ci95", {})
        for mode in ("threshold", "strict"):
            at = ", ".join(f"{name} {v:.4f}" for name, v in eq[mode].items())
            band = f" (95% CI {100 * ci[mode][0]:.1f}–{100 * ci[mode][1]:.1f}%)" if mode in ci else ""
            lines.append(f"at l2a-{mode}'s realized layers ({res['kl'][f'l2a-{mode}']['realized_layers']:.3f}, "
                         f"static interpolated between layer counts): {at}; l2a {100 * red[mode]:.1f}%{band} below the best of BI/angular")
    if "kl_reduction_vs_ablation" in res:
        a = res["kl_reduction_vs_ablation"]
        lines.append(f"against the budget-only ablation at equal layers (its top-{res['kl']['ablation']['layers_kept'][0]}/"
                     f"{res['kl']['ablation']['layers_kept'][1]} interpolated): l2a {100 * a['threshold']:.1f}% lower KL "
                     f"(95% CI {100 * a['ci95'][0]:.1f}–{100 * a['ci95'][1]:.1f}%)")
        if "token_weighted" in a:
            w = a["token_weighted"]
            lines.append(f"the same at l2a's answer-token-weighted layers ({w['realized_layers']:.3f}): l2a "
                         f"{100 * w['reduction']:.1f}% lower KL (95% CI {100 * w['ci95'][0]:.1f}–{100 * w['ci95'][1]:.1f}%)")
    if "headroom" in res:
        h = res["headroom"]
        lines.append(f"per-prompt headroom at {h['layers_kept']} layers ({h['sets']} sets: the greedy set and boundary swaps): "
                     f"greedy {h['greedy']:.4f}, best one for all {h['best_static']:.4f}, each chain's best {h['per_chain_oracle']:.4f} "
                     f"({100 * h['oracle_gain_over_best_static']:.1f}% below the best single set, an oracle bound)")
    if "depth_headroom" in res:
        d = res["depth_headroom"]
        lines.append(f"per-prompt depth headroom along the greedy order ({d['counts'][0]}–{d['counts'][1]} layers per chain, "
                     f"token-weighted mean {d['target']:g}): fixed {d['fixed']:.4f}, each chain's best count "
                     f"{d['per_chain_oracle']:.4f} ({100 * d['oracle_gain_over_fixed']:.1f}% lower, an oracle bound)")
    if "depth_by_prompt_length" in res:
        d = res["depth_by_prompt_length"]
        lines.append(f"depth by prompt length alone (shorter prompts more layers, same token-weighted compute): "
                     f"{100 * d['cv_gain_mean']:.1f}% lower KL than the fixed count on held-out halves "
                     f"({100 * d['cv_gain_min']:.1f} to {100 * d['cv_gain_max']:.1f}% over {d['repeats']} random halves); "
                     f"in sample {d['in_sample']:.4f} vs {d['fixed']:.4f} (α {d['alpha_in_sample']:g})")
    return "\n".join(lines)
