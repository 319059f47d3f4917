"""calibration: make a trained gate set's realized layer fraction track the requested one.

Raw gates need not keep the fraction they are asked for (the shipped SmolLM2 gates keep at most 0.74 of
the layers at any budget). After training, a table gives each requested layer budget a logit threshold
(`GatePolicy.threshold`), fit on prompts the training run held out: the task's, and for gates trained on
MC pairs too (`--mix-mc`) held-out pairs in the training share (mix.calibration_pairs), since a router
trained on both routes them apart and a table fit on one alone misses the request on the other. `tracking`
says how well each source is met; `l2a calibrate` refits the table for an existing artifact without
touching the gate weights. Tracking on evaluation data is measured by gatecheck.py. Not here: training
(train.py) or the decisions themselves (gates.py).
"""

from __future__ import annotations

import torch

from .budget import Budget
from .examples import example_order, math_examples, pooled_prompts
from .train import TrainConfig


def realized_layers(m, policy, prompts: list[list[int]], pad_id: int, budget: float, mode="threshold") -> list[float]:
    """Realized layer fraction per prompt at `budget` (layer axis), from the policy's hard decisions."""
    ds = policy.decisions(pooled_prompts(m, policy, prompts, pad_id), [Budget(layers=budget)] * len(prompts), mode=mode)
    return [d.layer_fraction for d in ds]


TRACKED = (0.85, 0.7, 0.55)  # the layer budgets `tracking` reports


def sources(cfg, tok, task: list[list[int]]) -> dict[str, list[list[int]]]:
    """The prompts a run's table is fit on, by source: the task's held-out `task` prompts, then its held-out
    MC pairs' prompts (mix.calibration_pairs; none unless it trains on them)."""
    from .mix import calibration_pairs

    return {"task": task, "mc": [p for p, _ in calibration_pairs(cfg, tok)]}


def tracking(m, policy, sources: dict[str, list[list[int]]], pad_id: int, budgets=TRACKED) -> dict:
    """{source: {budget: mean realized layer fraction}} of the calibrated policy on each source's prompts."""
    out = {}
    for name, ps in sources.items():
        if ps:
            pooled = pooled_prompts(m, policy, ps, pad_id)  # (N, H): once per source, for every budget
            fractions = lambda b: [d.layer_fraction for d in policy.decisions(pooled, [Budget(layers=b)] * len(ps))]  # noqa: E731
            out[name] = {str(b): round(sum(fractions(b)) / len(ps), 4) for b in budgets}
    return out


def calibrate(m, policy, prompts, pad_id, grid=None) -> list[list[float]]:
    """Table [[requested, effective, threshold]] so the mean realized layer fraction on `prompts` matches
    each requested one (threshold mode), with the threshold rather than the budget moved: raw gates may
    never keep more than some fraction (the shipped SmolLM2 gates keep at most 0.74 at any budget).

    Rows are fit from the highest budget down, each against the AND of the sets above it, exactly as
    `GatePolicy._nested` decides: the realized fraction at a grid budget equals the fitted one on `prompts`.
    """
    grid = sorted(grid or [round(0.3 + 0.05 * i, 2) for i in range(14)])  # 0.30 .. 0.95
    policy.config.calibration = []
    c = policy.config
    with torch.no_grad():
        feats = policy.features(pooled_prompts(m, policy, prompts, pad_id))  # (N, W)
        n = feats.shape[0]
        logits_at = lambda b: policy.gate_logits(feats, torch.tensor([[b, 1.0]]).expand(n, 2))[0]  # (N, n_gate)
        above = torch.ones(n, len(c.gateable), dtype=torch.bool)  # kept at every higher grid budget
        table = [[1.0, 1.0, round(float(logits_at(1.0).min()) - 1.0, 4)]]
        for want in reversed(grid):
            if not above.any():  # a higher budget already keeps only the protected layers: so does this one
                table.append([want, want, table[-1][2]])
                continue
            lg = logits_at(want).masked_fill(~above, float("-inf"))  # (N, n_gate)
            vals = lg[above].unique()  # sorted; a threshold between neighbours realizes one level
            cuts = torch.cat([vals[:1] - 1.0, (vals[1:] + vals[:-1]) / 2, vals[-1:] + 1.0])  # (V + 1,)
            realized = ((lg[None] > cuts[:, None, None]).sum(-1) + c.protected).float().mean(-1) / c.n_layers
            best = int((realized - want).abs().argmin())  # first (lowest cut) on ties: more layers kept
            above &= lg > cuts[best]
            table.append([want, want, round(float(cuts[best]), 4)])
    return table[::-1]


def recalibrate(m, directory, prompts: int | None = None) -> dict:
    """Refit the calibration table of the gate artifact in `directory` for base model `m` and rewrite its
    l2a_config.json (the gate weights are untouched). Prompts are those its training run held out: the
    first `calib_prompts` of its seeded order, then (for `prompts` beyond that) the end of the order,
    which training never reached (refused if it did); plus its held-out MC pairs as training picks them
    (mix.calibration_pairs, for the run's calib_prompts)."""
    from .checkpoint import load_gates, read_config, save_gates

    meta = read_config(directory)
    training = meta.get("training") or {}
    saved = training.get("config")
    if not saved:
        raise ValueError(f"{directory}: no training config recorded, so its held-out prompts are unknown")
    cfg = TrainConfig(**{**saved, "out": str(directory)})
    n = prompts or cfg.calib_prompts
    examples, source = math_examples(cfg, m.tokenizer)
    order = example_order(cfg, len(examples))
    extra = max(0, n - cfg.calib_prompts)
    seen = cfg.steps * cfg.examples  # training examples visited, from the front of the remaining order
    if extra and cfg.calib_prompts + seen + extra > len(order):
        unused = max(0, len(order) - cfg.calib_prompts - seen)
        raise ValueError(f"this run held out {cfg.calib_prompts} prompts and never used {unused} more, so at most "
                         f"{cfg.calib_prompts + unused} held-out prompts exist; got --prompts {n}")
    held = order[: min(n, cfg.calib_prompts)] + (order[-extra:] if extra else [])
    policy = load_gates(directory, m.hf)
    pad_id = m.tokenizer.pad_token_id if m.tokenizer.pad_token_id is not None else 0
    by_source = sources(cfg, m.tokenizer, [examples[i][0] for i in held])
    table = calibrate(m, policy, [p for ps in by_source.values() for p in ps], pad_id)
    policy.config.calibration = table
    tracked = tracking(m, policy, by_source, pad_id)
    counts = {k: len(v) for k, v in by_source.items() if v}
    training = {**training, "calibration": table, "calibration_tracking": tracked,
                "recalibrated": {"prompts": counts, "data_source": source}}
    save_gates(policy, directory, m.hf, extra=training)
    return {"gates": str(directory), "prompts": counts, "data_source": source, "calibration": table,
            "calibration_tracking": tracked}
