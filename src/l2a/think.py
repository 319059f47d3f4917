"""`l2a train-think`: a learned think allowance from truncation probing (the reasoning axis, DESIGN decision 5).

Supervision. For each training problem the dense model writes its chain of thought (greedy); its final
answer is the reference. The chain is then cut after k tokens for k on a grid (and 4, 8, 16, 32 tokens before its end), the answer marker is forced
(reasoning.ThinkBudgetProcessor with allowance 0) and a bounded answer generated. The *shortest
sufficient think length* of the problem is the smallest probed k from which on every probed cut still
gives the dense answer (the full length when none does). It is an upper bound on the true value, at grid
resolution.

Fit. The gates' think head predicts, from the pooled prompt states and the prompt's length, mu and sigma of log(length + OFFSET)
(Gaussian NLL, `losses.think_nll`, minimised in closed form: ridge regression, its strength chosen by
cross-validated answers kept against a fixed cap at equal tokens, see `fit`); the allowance at b_think is the b_think-quantile of that distribution
(gates.GatePolicy.allowance), so b_think is the share of prompts expected to keep their dense answer, and
allowances shrink with the budget for every prompt. The head has its own parameters and reads the same
pooled input as the router, so this term of the unified objective is fit on its own, after the
layer/group gates, without moving them. Probes are appended to `probes.jsonl` (resumable); the updated
artifact is written to `out` with a held-out report (NLL vs an input-blind fit, quantile coverage).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import losses
from .gates import THINK_OFFSET, GatePolicy, allowances
from .equalcost import interpolate

GRID = (0, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384)  # probed cut points (tokens)
END_CUTS = (4, 8, 16, 32)  # and cuts this many tokens before each chain's own end


@dataclass
class ThinkConfig:
    """A think-head fit (saved in the artifact's training record)."""

    model: str = "smollm2-135m"  # l2a.load spec of the base model
    gates: str | None = None  # artifact to start from (None: the model's shipped gates)
    out: str = "runs/think"  # probes.jsonl and the updated artifact
    data: str | None = None  # GSM8K-style train JSONL; None = shared data, hub, or generated
    problems: int = 256  # training problems probed
    max_new_tokens: int = 256  # dense chain-of-thought cap
    batch_size: int = 16
    holdout: float = 0.2  # share of probed problems held out for the report
    seed: int = 0
    dtype: str = "auto"  # base model dtype; "auto" (resolved here): bfloat16 where the CPU runs it natively
    prompt: str = "steps"  # instruction style (tasks.INSTRUCTIONS) of the probed chains and the head's input

    def __post_init__(self):
        from .loading import auto_dtype
        from .tasks import check_style

        check_style(self.prompt)
        if self.dtype == "auto":
            self.dtype = auto_dtype()
        if self.problems < 10 or self.max_new_tokens < 8 or self.batch_size < 1:
            raise ValueError("problems must be >= 10, max_new_tokens >= 8 and batch_size >= 1")
        if not 0.0 < self.holdout < 0.9:
            raise ValueError("holdout must be in (0, 0.9)")


# ---- probing ----------------------------------------------------------------------------------------


def _answers_after(m, seqs: list[list[int]], pad_id: int) -> list[str | None]:
    """Answer of each sequence when the marker is forced right after it (allowance 0)."""
    from .reasoning import AnswerFormat
    from .scoring import left_pad
    from .tasks import extract_answer

    ids, mask = left_pad(seqs, pad_id, m.device)
    fmt = m.answer_format or AnswerFormat.for_tokenizer(m.tokenizer)
    n_marker = len(m.tokenizer(fmt.marker, add_special_tokens=False)["input_ids"])
    out = m.generate(ids, attention_mask=mask, max_new_tokens=n_marker + 10, thinking_token_budget=0)  # answer <= 10 tokens
    texts = m.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [extract_answer(t) for t in texts]


@torch.no_grad()
def probe(m, rows: list[dict], cfg: ThinkConfig, path: Path, progress: bool = True) -> list[dict]:
    """One record per problem (appended to `path`, skipping problems already there)."""
    from tqdm import tqdm

    from .reasoning import think_length
    from .scoring import left_pad
    from .tasks import extract_answer, math_prompt

    tok = m.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = m.hf.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
    done = {r["index"]: r for r in _read(path)}
    todo = [i for i in range(len(rows)) if i not in done]
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="probe think lengths", disable=not progress)
    with path.open("a") as f:
        round_size = 4 * cfg.batch_size  # problems per round: later cuts keep few rows, batch them together
        for s in range(0, len(todo), round_size):
            idx = todo[s : s + round_size]
            prompts = [math_prompt(tok, rows[i]["question"], cfg.prompt) for i in idx]
            gen = []
            for c in range(0, len(prompts), cfg.batch_size):
                ids, mask = left_pad(prompts[c : c + cfg.batch_size], pad, m.device)
                gen += m.generate(ids, attention_mask=mask, max_new_tokens=cfg.max_new_tokens)[:, ids.shape[1]:].tolist()
            recs = []
            for j, i in enumerate(idx):
                g = gen[j][: next((t for t, x in enumerate(gen[j]) if x in eos_ids), len(gen[j]))]
                n = think_length(tok, g, eos_ids, m.answer_format)
                dense = extract_answer(tok.decode(g, skip_special_tokens=True))
                recs.append({"index": i, "think": n, "generated": len(g), "dense_answer": dense, "cuts": {},
                             "target": None if dense is None else n, "_seq": prompts[j] + g})
            # Cuts from the longest down; a row stops at its first cut that loses the dense answer, so
            # its target is the last cut before that (every longer probed cut kept the answer).
            active = [r for r in recs if r["dense_answer"] is not None]
            ends = sorted({r["think"] - d for r in active for d in END_CUTS if r["think"] > d})
            for k in sorted(set(GRID) | set(ends), reverse=True):
                jobs = [r for r in active if k < r["think"] and (k in GRID or r["think"] - k in END_CUTS)]
                answers = []
                for c in range(0, len(jobs), cfg.batch_size):
                    chunk = jobs[c : c + cfg.batch_size]
                    answers += _answers_after(m, [r["_seq"][: len(r["_seq"]) - r["generated"] + k] for r in chunk], pad)
                for r, a in zip(jobs, answers):
                    r["cuts"][str(k)] = a
                    if a == r["dense_answer"]:
                        r["target"] = k
                    else:
                        active.remove(r)
            for rec in recs:
                del rec["_seq"]
                f.write(json.dumps(rec) + "\n")
                f.flush()
                done[rec["index"]] = rec
            bar.update(len(idx))
    bar.close()
    return [done[i] for i in range(len(rows))]


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line from an interrupted run: probed again
            pass
    return out


# ---- fitting ------------------------------------------------------------------------------------------


ALPHAS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, math.inf)  # ridge strengths tried


def _ridge(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Weights (F + 1,) of y ~ [x, 1] with an L2 penalty `alpha` on all but the intercept (inf: intercept only)."""
    X = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # (N, F + 1)
    if math.isinf(alpha):
        w = torch.zeros(X.shape[1], dtype=x.dtype)
        w[-1] = y.mean()
        return w
    reg = torch.full((X.shape[1],), alpha, dtype=x.dtype)
    reg[-1] = 0.0
    return torch.linalg.solve(X.T @ X + torch.diag(reg), X.T @ y)


FOLDS = 4  # cross-validation folds over the training rows, for choosing the fit
SELECT_B = (0.3, 0.5, 0.7, 0.9)  # b_think values the choice is scored at
TRIAGE_P = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # triage rule: finishing probabilities tried


@torch.no_grad()
def fit(policy: GatePolicy, pooled: torch.Tensor, targets: torch.Tensor, train: torch.Tensor,
        lengths: torch.Tensor | None = None, thinks: torch.Tensor | None = None) -> dict:
    """Fit the think head on pooled (N, H), prompt lengths (N,) and sufficient lengths (N,) over rows
    `train` (bool (N,)); `thinks` (N,) are the dense chains' own lengths.

    The think term of the objective (Gaussian NLL of log length) is separable from the others, so it is
    minimised on its own and in closed form: mu is ridge regression on the head's input and sigma the
    out-of-fold residual RMS (an out-of-sample spread). A few hundred prompts and ~600 input features
    overfit any unregularised fit, so the ridge strength and the allowance rule (quantile, or triage at
    finishing probability p; gates.allowances) are chosen by 4-fold cross-validation on the training rows,
    by what the allowance is judged on (with `thinks`): the share of prompts that keep their dense answer
    at the mean think tokens it spends, against the best input-blind policy at those tokens (`cap_gain`),
    averaged over b_think 0.3 to 0.9; ties go to the input-blind quantile rule. On real models a better
    likelihood alone did not keep more answers (docs/results/think.md). Without `thinks`: quantile rule,
    by NLL. `cap_gain_test` reports the chosen fit's gain on the held-out rows."""
    y = torch.log(targets.double() + THINK_OFFSET)  # (N,)
    if lengths is not None:  # standardise log prompt length on the training rows
        log_len = lengths[train].double().clamp_min(1).log()
        policy.length_stats.copy_(torch.stack([log_len.mean(), log_len.std().clamp_min(1e-3)]).float())
    x = policy.think_input(pooled, lengths).double()  # (N, H + 1)
    X = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # (N, H + 2)
    rows = train.nonzero().flatten()
    fold = torch.arange(len(rows)) % FOLDS
    blind = torch.empty(len(rows), 2, dtype=x.dtype)  # per row: input-blind (mu0, sigma0) of its fold's fit rows
    for f in range(FOLDS):
        yf = y[rows[fold != f]]
        blind[fold == f] = torch.stack([yf.mean(), yf.std().clamp_min(0.05)])
    scores = {}
    for alpha in ALPHAS:
        oof = torch.empty(len(rows), dtype=x.dtype)  # out-of-fold mu per training row
        for f in range(FOLDS):
            w = _ridge(x[rows[fold != f]], y[rows[fold != f]], alpha)
            oof[fold == f] = X[rows[fold == f]] @ w
        sigma = (y[rows] - oof).pow(2).mean().sqrt().clamp_min(0.05)
        nll = float(losses.think_nll(oof, sigma.expand(len(rows)), y[rows]))
        for p in (None, *TRIAGE_P) if thinks is not None else (None,):
            rule = None if p is None else [blind[:, 0], blind[:, 1], p]
            gain = cap_gain(oof, sigma, targets[rows], thinks[rows], rule) if thinks is not None else None
            scores[(alpha, p)] = {"nll": nll, "gain": gain, "sigma": float(sigma)}
    if thinks is not None:  # ties go to the input-blind quantile rule (one cap per budget)
        alpha, p = max(sorted(scores, key=lambda k: (math.isfinite(k[0]), k[1] is not None)), key=lambda k: scores[k]["gain"])
    else:
        alpha, p = min(scores, key=lambda k: scores[k]["nll"])
    w = _ridge(x[rows], y[rows], alpha)  # refit on every training row
    policy.think_mu.weight.copy_(w[:-1].float()[None])
    policy.think_mu.bias.copy_(w[-1:].float())
    policy.think_log_sigma.copy_(torch.tensor(math.log(scores[(alpha, p)]["sigma"])))
    yt = y[rows]
    policy.config.think_triage = [] if p is None else [float(yt.mean()), float(yt.std().clamp_min(0.05)), p]
    out = {"alpha": alpha if math.isfinite(alpha) else "inf (input-blind)", "rule": "quantile" if p is None else f"triage p={p}",
           "selected_by": "cap_gain" if thinks is not None else "nll",
           "cv": {f"{a}/{'quantile' if q is None else q}": v for (a, q), v in scores.items()},
           **report(policy, pooled, targets, train, lengths)}
    if thinks is not None:
        test = ~train
        mu, sig = policy.think_params(pooled, lengths)
        out["cap_gain_test"] = cap_gain(mu[test], sig[0], targets[test], thinks[test], policy.config.think_triage or None)
    return out


def cap_gain(mu: torch.Tensor, sigma, targets: torch.Tensor, thinks: torch.Tensor, triage=None) -> float:
    """Mean over b in SELECT_B of: the share of prompts kept (sufficient length <= allowance) by the
    allowances `gates.allowances(mu, sigma, b, triage)`, minus the best share any input-blind policy keeps
    with the same mean think tokens (mean(min(chain, allowance))). Input-blind policies are the fixed caps
    and their random mixtures, i.e. the upper concave hull of the fixed-cap (tokens, kept) curve: giving
    a random half of the prompts a long cap and the rest none can beat every single cap when lengths are
    concentrated, and that gain owes nothing to the prompt. mu, targets, thinks (N,)."""
    t, th = targets.double(), thinks.double()
    caps = torch.arange(0, int(th.max()) + 2, dtype=torch.float64)  # (C,)
    used_c = torch.minimum(th[None], caps[:, None]).mean(1)  # (C,) increasing
    kept_c = (t[None] <= caps[:, None]).double().mean(1)  # (C,)
    hull = _upper_hull(used_c.tolist(), kept_c.tolist())
    gains = []
    for b in SELECT_B:
        allow = allowances(mu.double(), torch.as_tensor(sigma, dtype=torch.float64), b, triage).round()  # (N,)
        used = float(torch.minimum(th, allow).mean())
        gains.append(float((t <= allow).double().mean()) - interpolate(hull, used))  # used <= mean(chain): in range
    return sum(gains) / len(gains)


def _upper_hull(xs: list[float], ys: list[float]) -> list[tuple[float, float]]:
    """Upper concave hull of points sorted by x (monotone chain)."""
    hull: list[tuple[float, float]] = []
    for x, y in sorted(zip(xs, ys)):
        while len(hull) >= 2 and (hull[-1][0] - hull[-2][0]) * (y - hull[-2][1]) >= (hull[-1][1] - hull[-2][1]) * (x - hull[-2][0]):
            hull.pop()
        hull.append((x, y))
    return hull


@torch.no_grad()
def report(policy: GatePolicy, pooled: torch.Tensor, targets: torch.Tensor, train: torch.Tensor,
           lengths: torch.Tensor | None = None) -> dict:
    """Held-out NLL vs an input-blind log-normal fit on the same training rows, quantile coverage
    (share of held-out prompts whose sufficient length fits the allowance at b: ideally b), mean
    allowance per b, and the rank correlation of predicted mu with the true length."""
    y = torch.log(targets.float() + THINK_OFFSET)
    test = ~train
    mu, sigma = policy.think_params(pooled, lengths)
    blind_mu, blind_sigma = y[train].mean(), y[train].std().clamp_min(0.05)
    out = {
        "n_train": int(train.sum()), "n_test": int(test.sum()),
        "nll_test": float(losses.think_nll(mu[test], sigma[test], y[test])),
        "nll_test_input_blind": float(losses.think_nll(blind_mu.expand(int(test.sum())), blind_sigma.expand(int(test.sum())), y[test])),
        "spearman_mu_test": _spearman(mu[test], y[test]),
        "coverage": {}, "mean_allowance": {},
    }
    for b in (0.3, 0.5, 0.7, 0.9):
        allow = torch.tensor([policy.allowance(float(a), float(s), b) for a, s in zip(mu[test], sigma[test])])
        out["coverage"][str(b)] = float((targets[test] <= allow).float().mean())
        out["mean_allowance"][str(b)] = float(allow.float().mean())
    return out


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-9))


def _fresh_policy(m) -> GatePolicy:
    """A GatePolicy with the default shape for `m` whose layer and group gates are marked untrained."""
    from .train import TrainConfig, gate_config

    return GatePolicy(gate_config(m, TrainConfig(), untrained=["layers", "heads"])).eval()


def train_think(cfg: ThinkConfig, model=None, progress: bool = True) -> dict:
    """Probe, fit, save the artifact with the fitted think head; returns the summary."""
    from .checkpoint import load_gates, save_gates
    from .data import load_math
    from .loading import SHIPPED_GATES, load
    from .tasks import math_prompt
    from .examples import pooled_prompts

    t0 = time.time()
    m = model if model is not None else load(cfg.model, dtype=cfg.dtype, gates=False)
    src = cfg.gates
    if src is None and isinstance(cfg.model, str) and (SHIPPED_GATES / cfg.model).is_dir():
        src = SHIPPED_GATES / cfg.model
    fresh = src is None  # no gates for this model yet: a think-head-only artifact, layer/group axes refused below 1
    policy = _fresh_policy(m) if fresh else load_gates(src, m.hf)
    meta = {} if fresh else json.loads((Path(src) / "l2a_config.json").read_text())
    rows, source = load_math(cfg.data, split="train")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    rows = [rows[i] for i in order[: cfg.problems]]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    recs = probe(m, rows, cfg, out / "probes.jsonl", progress)
    usable = [r for r in recs if r["target"] is not None]
    if len(usable) < 10:
        raise ValueError(f"only {len(usable)} probed problems have a dense answer; need at least 10")
    tok = m.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    prompts = [math_prompt(tok, rows[r["index"]]["question"], cfg.prompt) for r in usable]
    pooled = pooled_prompts(m, policy, prompts, pad)  # (N, H)
    if fresh:
        policy.fit_input(pooled)  # a fresh policy: the input standardisation, from the same prompts
    lengths = torch.tensor([len(p) for p in prompts])  # (N,)
    targets = torch.tensor([r["target"] for r in usable])  # (N,)
    train = torch.rand(len(usable), generator=torch.Generator().manual_seed(cfg.seed + 1)) >= cfg.holdout
    thinks = torch.tensor([r["think"] for r in usable])  # (N,) the dense chains' lengths
    result = fit(policy, pooled, targets, train, lengths, thinks)
    policy.config.max_think = max(policy.config.max_think, cfg.max_new_tokens)
    summary = {
        "config": dataclasses.asdict(cfg), "data_source": source, "probed": len(recs), "usable": len(usable),
        "dense_think_mean": sum(r["think"] for r in usable) / len(usable),
        "target_mean": float(targets.float().mean()), "target_median": float(targets.float().median()),
        "target_is_full_length": sum(r["target"] == r["think"] for r in usable) / len(usable),
        "seconds": round(time.time() - t0, 1), **result,
    }
    training = dict(meta.get("training") or {}, think=summary)
    save_gates(policy, out, m.hf, extra=training)
    return summary

