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

import re

import torch

from .budget import Budget
from .decision import GateDecision

TRACK_GRID = tuple(round(0.5 + 0.05 * i, 2) for i in range(11))  # 0.50 .. 1.00


def _prompts_and_answers(m, data, limit):
    from .data import load_math
    from .tasks import math_prompt

    rows, source = load_math(data, split="test")
    rows = rows[:limit]
    tok = m.tokenizer
    pairs = []
    for r in rows:
        ans = tok(re.sub(r"<<[^>]*>>", "", r["answer"]), add_special_tokens=False)["input_ids"]
        pairs.append((math_prompt(tok, r["question"]), ans))
    return pairs, source


def _decide_all(m, policy, prompts, budget: Budget, mode="threshold", batch=16) -> list[GateDecision]:
    from .tasks import left_pad

    saved, m.policy = m.policy, policy
    try:
        out = []
        pad = m.tokenizer.pad_token_id or 0
        for i in range(0, len(prompts), batch):
            ids, mask = left_pad(prompts[i : i + batch], pad)
            out += m.decide(ids, budget, attention_mask=mask, mode=mode)
        return out
    finally:
        m.policy = saved


@torch.no_grad()
def teacher_forced_kl(m, pairs, decisions: list[GateDecision], max_len=320, batch=8) -> float:
    """Mean over answer tokens of KL(dense ‖ gated), each row under its own decision."""
    from .losses import token_kl
    from .train import _batch

    pad = m.tokenizer.pad_token_id or 0
    total, count = 0.0, 0.0
    for i in range(0, len(pairs), batch):
        chunk = [(p, a[: max(1, max_len - len(p))]) for p, a in pairs[i : i + batch]]
        ids, attn, _, ans = _batch(chunk, pad)  # right-padded (N, T)
        dense = torch.log_softmax(m.forward(ids, attn)[:, :-1].float(), -1)  # (N, T-1, V)
        gated = m.forward(ids, attn, decisions=decisions[i : i + batch])[:, :-1]
        mask = ans[:, 1:]
        n = mask.sum().item()
        total += token_kl(dense, gated, mask).item() * n
        count += n
    return total / max(count, 1)


WARM = "greedy-kl (warm start, static)"


def check_gates(m, data=None, limit=200, kl_limit=100, kl_fraction=0.7, ablation=None, progress=True,
                calibration=None, warm_order=None) -> dict:
    """Measure tracking, nesting, input-awareness and KL for `m.policy` (and an ablation policy).
    `warm_order`: the greedy-kl ranking the gates were warm-started from (least important first),
    measured as one more static set at the same count (what training started from)."""
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
    kl, counts = {}, {}  # counts: (method, layers kept) -> KL of the static set
    for mode in ("threshold", "strict"):
        ds = _decide_all(m, m.policy, kl_prompts, Budget(layers=kl_fraction), mode=mode)
        kl[f"l2a-{mode}"] = {"kl": teacher_forced_kl(m, kl_pairs, ds),
                             "realized_layers": sum(d.layer_fraction for d in ds) / len(ds)}
    statics = {name: make_method(name, calibration=calibration) for name in ("block-influence", "angular", "even-spaced")}
    if warm_order:
        statics[WARM] = warm_order

    def static_kl(name: str, count: int) -> float:
        """KL of static method `name` keeping `count` layers (memoised)."""
        if (name, count) not in counts:
            pol = statics[name]
            if name == WARM:  # the greedy order: drop its first L - count layers
                drop = set(pol[: L - count])
                ds = [GateDecision(layers=tuple(i not in drop for i in range(L)))] * len(kl_pairs)
            else:
                ds = pol.decide(m, None, None, [Budget(layers=count / L)] * len(kl_pairs))
            counts[name, count] = teacher_forced_kl(m, kl_pairs, ds)
        return counts[name, count]

    from .baselines import kept_count

    k = kept_count(L, kl_fraction)
    for name in statics:
        kl[name] = {"kl": static_kl(name, k), "realized_layers": k / L}
    if ablation is not None:
        # equal realized compute: the ablation at the budget whose mean realized fraction matches l2a's
        target = kl["l2a-threshold"]["realized_layers"]
        best = min(TRACK_GRID[:-1] + (kl_fraction,), key=lambda b: abs(
            sum(d.layer_fraction for d in _decide_all(m, ablation, kl_prompts, Budget(layers=b))) / len(kl_prompts) - target))
        ds = _decide_all(m, ablation, kl_prompts, Budget(layers=best))
        kl["ablation"] = {"kl": teacher_forced_kl(m, kl_pairs, ds), "requested": best,
                          "realized_layers": sum(d.layer_fraction for d in ds) / len(ds),
                          "distinct_decisions": len({d.layers for d in ds})}
    res["kl"] = kl
    static_best = min(kl["block-influence"]["kl"], kl["angular"]["kl"])
    res["kl_reduction_vs_best_static"] = {
        mode: 1 - kl[f"l2a-{mode}"]["kl"] / static_best for mode in ("threshold", "strict")
    }
    # Equal realized compute: each static method's KL interpolated between its neighbouring layer counts at
    # the fraction l2a realized in each mode (l2a's threshold sets keep a varying number per prompt).
    equal = {}
    for mode in ("threshold", "strict"):
        f = kl[f"l2a-{mode}"]["realized_layers"] * L
        c0 = min(L - 1, math.floor(f + 1e-9))
        w = f - c0
        equal[mode] = {name: static_kl(name, c0) + (w * (static_kl(name, c0 + 1) - static_kl(name, c0)) if w > 1e-9 else 0.0)
                       for name in ("block-influence", "angular") + ((WARM,) if warm_order else ())}
    res["kl_static_at_equal_layers"] = equal
    res["kl_reduction_vs_best_static_equal_layers"] = {
        mode: 1 - kl[f"l2a-{mode}"]["kl"] / min(equal[mode]["block-influence"], equal[mode]["angular"])
        for mode in ("threshold", "strict")
    }
    res["n_layers"] = L
    return res


def render(res: dict) -> str:
    """Markdown summary of a check_gates result."""
    lines = ["| requested | realized mean (min–max) | strict max | distinct decisions |", "|---|---|---|---|"]
    for t in res["tracking"]:
        lines.append(f"| {t['requested']:.2f} | {t['realized_mean']:.3f} ({t['realized_min']:.2f}–{t['realized_max']:.2f}) "
                     f"| {t['strict_max']:.3f} | {t['distinct_decisions']} |")
    lines += ["", f"tracking mean |realized − requested|: {res['tracking_mean_abs_error']:.3f}; "
              f"strict ever exceeds: {res['strict_ever_exceeds']}; nested pairs: {100 * res['nested_share']:.2f}%", "",
              "| method | teacher-forced KL | realized layers |", "|---|---|---|"]
    for name, v in res["kl"].items():
        lines.append(f"| {name} | {v['kl']:.4f} | {v['realized_layers']:.3f} |")
    red = res["kl_reduction_vs_best_static"]
    lines.append(f"\nKL reduction vs best static (BI/angular): threshold {100 * red['threshold']:.1f}%, strict {100 * red['strict']:.1f}%")
    if "kl_static_at_equal_layers" in res:
        eq, red = res["kl_static_at_equal_layers"], res["kl_reduction_vs_best_static_equal_layers"]
        for mode in ("threshold", "strict"):
            at = ", ".join(f"{name} {v:.4f}" for name, v in eq[mode].items())
            lines.append(f"at l2a-{mode}'s realized layers ({res['kl'][f'l2a-{mode}']['realized_layers']:.3f}, "
                         f"static interpolated between layer counts): {at}; l2a {100 * red[mode]:.1f}% below the best of BI/angular")
    return "\n".join(lines)
