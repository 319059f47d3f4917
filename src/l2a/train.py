"""`l2a train`: fit a GatePolicy to a frozen base model with L2A's unified objective.

Each step takes N training examples (question -> chain of thought and answer), runs the dense model once
(teacher log-probs + the router's input), samples two budgets per example (a share at 1.0), and takes
a gradient step on the unified objective (objective.py: straight-through or score-function estimator)

    ce·CE + kl·KL(dense ‖ gated) + mono·nesting + agree·KL(gated_hi ‖ gated_lo) + Σ λ_axis·hinge²(E[cost] − b − tol)

with the λ_axis updated by dual ascent. The base weights stay frozen. Optionally (`select = "val-kl"` or
"val-exact") the artifact is the checkpoint with the lowest held-out KL (selection.py). Progress bar, JSONL log, periodic
checkpoints (safetensors + JSON, no pickle), resume after interruption, seeded. After training, a
calibration table (a logit threshold per budget, calibration.py) is fit so the mean realized layer
fraction tracks the request.
Not here: the examples and the router's input (examples.py), the gate network (gates.py), the objective (objective.py,
losses.py), evaluation (evaluate.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import save_gates
from .examples import example_batch, example_order, math_examples, pooled_prompts, teacher_pass
from .gates import GateConfig, GatePolicy
from .mix import training_pairs
from .objective import objective
from .selection import VAL_BUDGETS
from .warmstart import WARM_PAIRS, WARM_STARTS, warm_start


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved with the artifact)."""

    model: str = "smollm2-135m"  # l2a.load spec of the frozen base model
    data: str | None = None  # GSM8K-style train JSONL; None = shared data, hub, or generated
    out: str = "runs/gates"  # output directory: artifact, log.jsonl, training state
    steps: int = 300  # optimizer steps
    examples: int = 4  # examples per step (each at two budgets: 2x rows)
    max_len: int = 160  # tokens per example (prompt + start of the chain of thought)
    lr: float = 3e-3  # AdamW learning rate of the gates
    seed: int = 0  # data order, budgets, gate noise
    dtype: str = "auto"  # base model dtype while training; "auto" (resolved here): bfloat16 where native, else float32
    tau_start: float = 1.0  # Gumbel-sigmoid temperature, annealed geometrically
    tau_end: float = 0.2
    p_full: float = 0.15  # share of examples whose higher budget is 1.0 (protects dense quality)
    layer_min: float = 0.4  # lowest layer budget sampled
    head_min: float = 0.5  # lowest head budget sampled
    p_head_full: float = 0.6  # share of rows with head budget 1.0
    ce: float = 0.1  # weight of the task cross-entropy
    kl: float = 1.0  # weight of KL(dense ‖ gated)
    mono: float = 1.0  # weight of the kept-set nesting term
    agree: float = 0.1  # weight of answer agreement across the two budgets
    tol: float = 0.02  # cost tolerance above the budget
    cost: str = "request"  # cost hinge per "request" (row), or on the "batch" mean (+ row_tol per row; objective.py)
    row_tol: float = 0.1  # cost = "batch": how far one row may spend above its budget before its own hinge
    track: float = 0.0  # weight of (E[cost] - b)^2 per axis (10 tracked budgets to ±0.013 but chose worse layers)
    warm_start: str | None = None  # initial layer ranking: "block-influence" or "greedy-kl" (WARM_STARTS)
    warm_scale: float = 1.5  # warm start: the static ranking's z-scores times this are added to the logit bias
    warm_pairs: int = WARM_PAIRS  # greedy-kl: held-out task examples searched on (the end of the seeded order)
    warm_text: int = 0  # greedy-kl: second-source examples (mix.py) searched on with the task's
    warm_domains: bool = False  # greedy-kl: search the task's and the warm_text examples apart and start each
    #   prompt from its own source's order (an input-aware warm start; warmstart.py)
    warm_refine: list = field(default_factory=list)  # greedy-kl: swap-refine the order's set at these layer
    #   budgets, deepest first, each inside the one before, and nest the order around them (warmstart.py);
    #   empty = the greedy order as searched (a single number is read as a list of one)
    anchor: float = 0.0  # weight of the trust region on each prompt's layer ranking as warm-started
    #   (losses.rank_anchor; 0 = none): keeps one source's training from reordering another's layers
    train_text: float = 0.0  # share of each step's examples from the second source (mix.py) instead of the
    #   task's: the objective then also sees text unlike GSM8K (out-of-domain prompts route from it too)
    mix_mc: list = field(default_factory=list)  # the second source: these MC files' (question, correct
    #   choice) pairs; empty = generic prose windows (prose.py)
    lambda_init: float = 20.0  # initial cost multipliers
    dual_lr: float = 20.0  # dual ascent step on the multipliers (per unit of mean violation)
    dual: str = "violations"  # multiplier update: "violations" (only rows over budget; never decreases) or
    #   "signed" (mean of E[cost] - b - tol over rows below budget 1, projected to >= 0: can decrease)
    noise_end: float = 1.0  # gate noise scale, annealed from 1 to this (< 1: late training samples the sets
    #   inference runs; E[cost] is the exact keep probability under the scaled noise)
    estimator: str = "st"  # gradient of the task terms: "st" (straight-through) or "score" (objective.py)
    samples: int = 4  # gate sets sampled per row (estimator = "score")
    sampler: str = "bernoulli"  # estimator = "score": layer gates drawn independently ("bernoulli"), or exactly
    #   the count inference keeps at the row's budget, by keep-logit without replacement ("topk"; objective.py)
    dense_at_full: bool = False  # rows at budget 1.0 on an axis run that axis dense in training, as at inference
    select: str = "last"  # artifact: "last" step, or the best held-out KL checkpoint (selection.py) of its
    #   top-k layer sets ("val-kl") or of its exact-mode sets, those `l2a eval` runs as l2a-exact ("val-exact")
    val_every: int = 25  # steps between held-out KL checks (select != "last")
    val_budgets: list = field(default_factory=lambda: list(VAL_BUDGETS))  # the layer budgets those checks average
    width: int = 256  # router width
    router_layers: int = 1  # layers before the router
    protect_last: int = 1  # last layers always kept
    ablation: bool = False  # budget-only ablation: router input zeroed
    fixed_budget: float | None = None  # tuned-static baseline: every row at this layer budget, budget-only gates
    save_every: int = 50  # checkpoint period (steps)
    calib_prompts: int = 64  # held-out train prompts for the calibration table (0 = none)
    calib_mix: bool = True  # with mix_mc: fit that table on held-out MC pairs too, in the training share
    #   (mix.calibration_pairs); False = on the task's prompts alone (artifacts before 2026-12-07)
    depth_pairs: int = 0  # held-out train chains to fit a depth head on after training (0 = none; depth.py)
    depth_max_len: int = 320  # their length, prompt included: whole chains (check-gates' test chains are cut at 320)
    limit: int | None = None  # use only the first N training examples
    bridges: str | None = None  # bridges directory (`l2a fit-bridges`): rows that skip a layer run its map in
    #   training as at inference; the artifact records their digest and `l2a eval` then needs them

    def __post_init__(self):
        if self.dtype == "auto":
            from .loading import auto_dtype

            self.dtype = auto_dtype()
        if self.steps < 1 or self.examples < 1 or self.max_len < 16:
            raise ValueError("steps and examples must be >= 1 and max_len >= 16")
        if not 0 < self.layer_min <= 1 or not 0 < self.head_min <= 1:
            raise ValueError("layer_min and head_min must be in (0, 1]")
        if self.fixed_budget is not None and not 0 < self.fixed_budget < 1:
            raise ValueError(f"fixed_budget must be in (0, 1), got {self.fixed_budget!r}")
        if self.dual not in ("violations", "signed") or self.select not in SELECTS:
            raise ValueError(f"dual must be violations|signed and select one of {'|'.join(SELECTS)}, "
                             f"got {self.dual!r}, {self.select!r}")
        self.val_budgets = [float(b) for b in self.val_budgets]  # a list, as the saved JSON config reads back
        if not self.val_budgets or not all(0 < b < 1 for b in self.val_budgets):
            raise ValueError(f"val_budgets must be layer budgets in (0, 1), got {self.val_budgets!r}")
        if not 0 < self.noise_end <= 1 or self.val_every < 1 or self.samples < 1:
            raise ValueError("noise_end must be in (0, 1], val_every and samples >= 1")
        if self.depth_pairs < 0 or 0 < self.depth_pairs < 8:
            raise ValueError(f"depth_pairs must be 0 (no depth head) or at least 8, got {self.depth_pairs}")
        if self.depth_pairs and self.depth_max_len < self.max_len:
            raise ValueError(f"depth_max_len ({self.depth_max_len}) must be at least max_len ({self.max_len})")
        if self.cost not in ("request", "batch") or not 0 <= self.row_tol <= 1:
            raise ValueError(f"cost must be request or batch and row_tol in [0, 1], got {self.cost!r}, {self.row_tol!r}")
        if self.estimator not in ("st", "score"):
            raise ValueError(f"estimator must be st or score, got {self.estimator!r}")
        if self.sampler not in ("bernoulli", "topk") or (self.sampler == "topk" and self.estimator != "score"):
            raise ValueError(f"sampler must be bernoulli or topk, and topk needs estimator score; got "
                             f"{self.sampler!r} with {self.estimator!r}")
        self.mix_mc = [str(p) for p in self.mix_mc]  # a list, as the saved JSON config reads back
        if self.mix_mc and not (self.train_text or self.warm_text):
            raise ValueError("mix_mc names the second source of --train-text / --warm-text; give one of them")
        if isinstance(self.warm_pairs, bool) or not isinstance(self.warm_pairs, int) or self.warm_pairs < 1:
            raise ValueError(f"warm_pairs must be a positive int, got {self.warm_pairs!r}")
        if self.warm_text < 0 or (self.warm_text and self.warm_start != "greedy-kl"):
            raise ValueError(f"warm_text needs warm_start greedy-kl and must be >= 0, got {self.warm_text!r}")
        if self.warm_domains and not (self.warm_text and self.train_text):
            raise ValueError("warm_domains starts each source from its own order: it needs warm_text (the second "
                             "source's search examples) and train_text (its training prompts)")
        if not 0 <= self.train_text < 1 or (self.train_text and round(self.train_text * self.examples) < 1):
            raise ValueError(f"train_text must be in [0, 1) and give at least one prose example per step "
                             f"(train_text x examples >= 0.5), got {self.train_text!r} with {self.examples} examples")
        refine = [self.warm_refine] if isinstance(self.warm_refine, (int, float)) else list(self.warm_refine or [])
        if refine and (self.warm_start != "greedy-kl" or any(isinstance(b, bool) or not isinstance(b, (int, float))
                                                             or not self.layer_min <= b < 1 for b in refine)):
            raise ValueError(f"warm_refine refines the greedy-kl warm start's sets at layer budgets in [layer_min, 1) "
                             f"= [{self.layer_min}, 1): it needs warm_start greedy-kl, got {self.warm_refine!r}")
        self.warm_refine = sorted({float(b) for b in refine})  # deepest first
        if self.anchor < 0 or (self.anchor and self.warm_start is None):
            raise ValueError(f"anchor holds the layer ranking near the warm start's: it needs --warm-start and "
                             f"must be >= 0, got {self.anchor!r}")
        if self.warm_start is not None and self.warm_start not in WARM_STARTS:
            raise ValueError(f"warm_start must be one of {', '.join(WARM_STARTS)} or None, got {self.warm_start!r}")


def _sample_budgets(cfg: TrainConfig, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3) higher and lower budgets per example: lower <= higher on every axis."""
    u = lambda: torch.rand(n, generator=g)  # noqa: E731
    if cfg.fixed_budget is not None:  # tuned-static: one budget, full heads, for every row
        fixed = torch.tensor([cfg.fixed_budget, 1.0, 1.0]).expand(n, 3).clone()
        return fixed, fixed.clone()
    full = u() < cfg.p_full
    lay_hi = torch.where(full, torch.ones(n), cfg.layer_min + (1 - cfg.layer_min) * u())
    lay_lo = cfg.layer_min + (lay_hi - cfg.layer_min) * u()
    head_hi = torch.where(full | (u() < cfg.p_head_full), torch.ones(n), cfg.head_min + (1 - cfg.head_min) * u())
    head_lo = torch.where(u() < 0.5, head_hi, cfg.head_min + (head_hi - cfg.head_min) * u())
    ones = torch.ones(n)
    return torch.stack([lay_hi, head_hi, ones], -1), torch.stack([lay_lo, head_lo, ones], -1)


def dual_step(lam: float, expected: torch.Tensor, budget: torch.Tensor, cfg: TrainConfig) -> float:
    """One dual-ascent update of a cost multiplier from E[cost] (R,) and budgets (R,) of a batch's rows."""
    g = expected - budget - cfg.tol  # (R,) constraint values, <= 0 is feasible
    if cfg.dual == "violations":  # rows under budget must not cancel rows over it: lam never decreases
        return lam + cfg.dual_lr * float(g.clamp_min(0).mean())
    below = budget < 1  # rows at budget 1 cannot violate, so they say nothing about the multiplier
    return max(0.0, lam + cfg.dual_lr * float(g[below].mean())) if below.any() else lam


def _state_path(out: Path) -> Path:
    return out / "train_state.safetensors"  # and train_state.json


def _save_state(out: Path, step, policy, opt, lambdas, gen, cfg, bridges: str | None):
    from .checkpoint import save_state

    save_state(_state_path(out), policy, opt, gen, {},
               {"step": step, "lambdas": lambdas, "config": dataclasses.asdict(cfg), "bridges": bridges})


def _load_state(out: Path, policy, opt, gen, cfg, bridges: str | None) -> tuple[int, dict] | None:
    """(step, lambdas) of the run saved in `out`, restored into policy, opt and gen; None when there is none.
    Refuses a run with another config, or one trained under other bridges (`bridges`: the running maps'
    digest; a directory refit in place keeps its path, not its digest)."""
    from .checkpoint import read_state, restore_state

    got = read_state(_state_path(out))
    if got is None:
        return None
    tensors, meta = got
    after = ("steps", "save_every", "out", "depth_pairs", "depth_max_len")  # may change between a run and its resumption
    # read back through TrainConfig: fields added since the run take their defaults, old forms are normalized
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    then = TrainConfig(**{k: v for k, v in meta["config"].items() if k in names})
    saved = {k: v for k, v in dataclasses.asdict(then).items() if k not in after}
    now = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in after}
    if saved != now:
        diff = {k: (saved.get(k), now.get(k)) for k in now if saved.get(k) != now.get(k)}
        raise ValueError(f"{out} holds a run with another config {diff}; use a new --out or the same config")
    if "bridges" in meta and meta["bridges"] != bridges:  # (states saved before bridges were recorded: unchecked)
        raise ValueError(f"{out} holds a run trained under bridges {meta['bridges']}, not under these ({bridges}); "
                         "use a new --out or the bridges it started with")
    restore_state(tensors, policy, opt, gen)
    return meta["step"], meta["lambdas"]


def train(cfg: TrainConfig, model=None, progress: bool = True) -> dict:
    """Train gates; returns a summary. `model` may be a preloaded GatedModel (tests); with `cfg.bridges`,
    skipped layers run those bridges throughout (else the model's own, if any)."""
    from .loading import load

    torch.manual_seed(cfg.seed)
    m = model if model is not None else load(cfg.model, dtype=cfg.dtype)
    bridges = m.bridges
    if cfg.bridges is not None:
        from .bridges import load_bridges

        bridges = load_bridges(cfg.bridges, m.hf)
    with m.bridged(bridges):
        return _train(cfg, m, progress)


def _train(cfg: TrainConfig, m, progress: bool) -> dict:
    from tqdm import tqdm

    for p in m.hf.parameters():
        p.requires_grad_(False)
    tok = m.tokenizer
    examples, source = math_examples(cfg, tok)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = example_order(cfg, len(examples))
    calib = [examples[i] for i in order[: cfg.calib_prompts]]
    # The end of the order is held out: the last warm_pairs for the greedy warm-start search, the VAL_PAIRS
    # before them for checkpoint selection (disjoint, so selection does not favour the searched ranking).
    w = cfg.warm_pairs
    selecting = cfg.select != "last"
    reserve = (w if cfg.warm_start == "greedy-kl" or selecting or cfg.depth_pairs else 0) + (
        VAL_PAIRS if selecting or cfg.depth_pairs else 0) + cfg.depth_pairs
    if len(order) - cfg.calib_prompts - reserve < cfg.examples:
        raise ValueError(f"{len(order)} examples leave too few to train on after {cfg.calib_prompts} calibration "
                         f"and {reserve} held-out prompts")
    train_idx = order[cfg.calib_prompts : len(order) - reserve]
    held_out = [examples[i] for i in order[len(order) - w :]]
    val = [examples[i] for i in order[len(order) - w - VAL_PAIRS : len(order) - w]]
    end = len(order) - w - VAL_PAIRS  # the depth head's chains come just before those
    # the depth head's chains whole, as at inference (a head fit on chains cut at max_len did not transfer)
    whole = math_examples(cfg, tok, cut=cfg.depth_max_len)[0] if cfg.depth_pairs else examples
    depth_set = [whole[i] for i in order[end - cfg.depth_pairs : end]] if cfg.depth_pairs else []

    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    gcfg = gate_config(m, cfg, budget_only=cfg.ablation or cfg.fixed_budget is not None)
    policy = GatePolicy(gcfg)
    second = training_pairs(cfg, tok)  # second-source examples (mix.py); [] unless train_text
    n_text = round(cfg.train_text * cfg.examples)  # second-source examples per step
    n_task = cfg.examples - n_text
    # the router input is standardised on prompts drawn as training draws them: the task's, then the second source's
    first = [examples[i][0] for i in train_idx[: 256 * n_task // cfg.examples]]
    n_first = len(first)
    first += [p for p, _ in second[: 256 * n_text // cfg.examples]]
    pooled = pooled_prompts(m, policy, first, pad_id)  # (N, H)
    policy.fit_input(pooled)
    origin = (torch.arange(len(first)) >= n_first).long()  # (N,) 0 task, 1 second source
    warm = warm_start(m, policy, cfg, held_out, pooled, origin) if cfg.warm_start else {}
    ref = copy.deepcopy(policy).requires_grad_(False) if cfg.anchor else None  # rebuilt the same way on resume
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    lambdas = {"layers": cfg.lambda_init, "heads": cfg.lambda_init}
    start = 0
    under = m.bridges.digest() if m.bridges is not None else None  # the maps skipped layers run, if any
    resumed = _load_state(out, policy, opt, gen, cfg, under)
    if resumed is not None:
        start, lambdas = resumed
    k = gcfg.router_layers
    log = (out / "log.jsonl").open("a")
    if warm and start == 0:
        log.write(json.dumps({"step": 0, **warm}) + "\n")
    selector = None
    if selecting:
        from .selection import Selector

        selector = Selector(m, val, pad_id, out, cfg.val_budgets, exact=cfg.select == "val-exact")
        if start == 0:
            log.write(json.dumps(selector.check(policy, 0)) + "\n")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc="train gates")
    t0 = time.time()
    for step in bar:
        n = cfg.examples
        batch = [examples[train_idx[(step * n_task + j) % len(train_idx)]] for j in range(n_task)]
        batch += [second[(step * n_text + j) % len(second)] for j in range(n_text)]
        ids, attn, prompt_mask, ans_mask = example_batch(batch, pad_id)
        teacher, pooled = teacher_pass(m, ids, attn, prompt_mask, k)
        b_hi, b_lo = _sample_budgets(cfg, n, gen)
        frac = step / max(1, cfg.steps - 1)
        tau = cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** frac
        noise = cfg.noise_end**frac
        loss, terms, costs, budgets, hard = objective(
            m, policy, ids, attn, ans_mask, teacher, pooled, b_hi, b_lo, tau, gen, cfg, lambdas, noise, ref
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # dual ascent on g = E[cost] - b - tol <= 0
            for axis, e, col in (("layers", costs[0], 0), ("heads", costs[1], 1)):
                lambdas[axis] = dual_step(lambdas[axis], e, budgets[:, col], cfg)
        rec = {
            "step": step + 1, **{name: t.detach().item() for name, t in terms.items()}, "tau": tau,
            "lambda_layers": lambdas["layers"], "lambda_heads": lambdas["heads"],
            "layers_over_budget": (costs[0] - budgets[:, 0]).mean().item(),
            "hard_layers": hard, "noise": noise, "seconds": round(time.time() - t0, 1),
        }
        log.write(json.dumps(rec) + "\n")
        log.flush()
        bar.set_postfix(kl=f"{rec['kl']:.3f}", over=f"{rec['layers_over_budget']:+.3f}", lam=f"{lambdas['layers']:.1f}")
        if selector is not None and ((step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps):
            log.write(json.dumps(selector.check(policy, step + 1)) + "\n")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            _save_state(out, step + 1, policy, opt, lambdas, gen, cfg, under)
    log.close()
    selected = selector.restore(policy) if selector is not None else None
    policy.eval()
    from .calibration import calibrate, sources, tracking

    by_source = sources(cfg, tok, [p for p, _ in calib])
    table = calibrate(m, policy, [p for ps in by_source.values() for p in ps], pad_id) if calib else []
    policy.config.calibration = table
    depth = None
    if cfg.depth_pairs and not gcfg.budget_only:  # the ablation reads no input: no depth head
        from .depth import fit_depth

        depth = fit_depth(m, policy, depth_set, pad_id, progress=progress)
    tracked = tracking(m, policy, by_source, pad_id) if calib else {}  # as decided at inference, depth head included
    summary = {"config": dataclasses.asdict(cfg), "data_source": source, "train_examples": len(train_idx),
               "seconds": round(time.time() - t0, 1), "lambdas": lambdas, "calibration": table,
               "calibration_tracking": tracked,
               "gate_params": policy.n_params(), **warm,
               **({"bridges": m.bridges.describe()} if m.bridges is not None else {}),
               **({"selected": selected} if selected else {}), **({"depth": depth} if depth else {})}
    save_gates(policy, out, m.hf, extra=summary)
    return summary


def gate_config(m, cfg: TrainConfig, **extra) -> GateConfig:
    """The GateConfig of gates trained by `cfg` on model `m` (`extra`: budget_only, untrained, ...)."""
    geo = m.geometry
    return GateConfig(n_layers=geo.n_layers, n_groups=geo.n_kv, hidden=m.hf.config.hidden_size, width=cfg.width,
                      router_layers=cfg.router_layers, protect_last=cfg.protect_last, **extra)


SELECTS = ("last", "val-kl", "val-exact")  # TrainConfig.select
VAL_PAIRS = 32  # select != "last": held-out training examples checkpoints are scored on (just before those)
