"""GatePolicy, the unified objective, training and gate artifacts, on tiny models."""

import copy
import json

import pytest
import torch
from conftest import left_pad, prompts, tiny_model, tiny_tokenizer, write_math

from l2a.budget import Budget
from l2a.calibration import calibrate, realized_layers, recalibrate
from l2a.checkpoint import load_gates, save_gates
from l2a.decision import GateDecision
from l2a.examples import example_batch, math_examples, teacher_pass
from l2a.gated import GatedModel
from l2a.gates import GateConfig, GatePolicy
from l2a.objective import objective
from l2a.train import TrainConfig, _sample_budgets, dual_step, train

L, G = 6, 4


def random_policy(seed=0, scale=0.7, **kw) -> GatePolicy:
    torch.manual_seed(seed)
    p = GatePolicy(GateConfig(n_layers=L, n_groups=G, hidden=64, width=32, **kw))
    with torch.no_grad():
        for prm in p.parameters():
            prm.normal_(0, scale)
    return p.eval()


@pytest.fixture
def gm(arch_name):
    m = GatedModel(tiny_model(arch_name, n_layers=L), tokenizer=tiny_tokenizer())
    m.policy = random_policy()
    return m


def batch_ids(b=6, t=9, seed=3):
    return left_pad(prompts(b, t, seed=seed), [0, 1, 2, 3, 4, 5][:b])


@torch.no_grad()
def test_budget_one_is_dense_exactly(gm):
    ids, mask = batch_ids()
    ref = gm.detach()
    want = ref.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    m = GatedModel(ref, tokenizer=gm.tokenizer)
    m.policy = gm.policy
    assert all(d.layer_fraction == 1.0 and d.kv_groups is None for d in m.decide(ids, 1.0, attention_mask=mask))
    # the router pass is replayed as the start of prefill; the result is still exactly HF's
    assert torch.equal(m.generate(ids, attention_mask=mask, budget=Budget(1.0), max_new_tokens=5), want)
    # a forward that decides inside its own pass (no cache, unpadded) is HF's forward, bit for bit
    assert torch.equal(m.forward(ids[:, 5:], budget=Budget(1.0)), ref(ids[:, 5:]).logits)
    assert m.last_decisions == [m.dense_decision()] * ids.shape[0]


@torch.no_grad()
@pytest.mark.parametrize("mode", ["threshold", "strict", "exact"])
def test_budget_path_equals_explicit_decisions(gm, mode):
    ids, mask = batch_ids()
    budgets = [0.3, 0.5, 0.6, 0.8, 0.9, 1.0]
    ds = gm.decide(ids, budgets, attention_mask=mask, mode=mode)
    assert len({d.layers for d in ds}) > 1
    out = gm.generate(ids, attention_mask=mask, budget=budgets, mode=mode, max_new_tokens=4)
    assert gm.last_decisions == ds
    assert torch.equal(out, gm.generate(ids, attention_mask=mask, decisions=ds, max_new_tokens=4))
    assert torch.equal(gm.forward(ids, attention_mask=mask, budget=budgets, mode=mode),
                       gm.forward(ids, attention_mask=mask, decisions=ds))


@torch.no_grad()
def test_exact_keeps_the_static_count_nested_and_input_aware():
    from l2a.baselines import kept_count

    differ = 0
    for seed in range(4):
        m = GatedModel(tiny_model("qwen2", n_layers=L, seed=seed))
        m.policy = random_policy(seed, scale=1.0)
        ids, mask = batch_ids(6, 8, seed=seed)
        prev = None
        for b in [round(0.05 * i, 2) for i in range(7, 21)]:
            ds = m.decide(ids, Budget(layers=b), attention_mask=mask, mode="exact")
            thr = m.decide(ids, Budget(layers=b), attention_mask=mask, mode="threshold")
            for d, t in zip(ds, thr):
                assert sum(d.layers) == (L if b == 1.0 else max(2, kept_count(L, b)))  # router + last always run
                assert d.kv_groups == t.kv_groups  # only the layer count changes
                if sum(t.layers) == sum(d.layers):  # a threshold set of that size is the exact set
                    assert d.layers == t.layers
            if prev is not None:  # nested: kept at the lower budget => kept at this one
                assert all(all(h or not lo for lo, h in zip(p.layers, d.layers)) for p, d in zip(prev, ds))
            differ += len({d.layers for d in ds}) > 1
            prev = ds
    assert differ > 0  # the layers chosen depend on the prompt


@torch.no_grad()
def test_strict_never_exceeds_and_sets_are_nested():
    for seed in range(4):
        m = GatedModel(tiny_model("qwen3", n_layers=L, seed=seed))
        m.policy = random_policy(seed, scale=1.0)
        ids, mask = batch_ids(6, 8, seed=seed)
        grid = [round(0.1 * i, 1) for i in range(2, 11)]
        prev = {"threshold": None, "strict": None}
        for b in grid:
            for mode in prev:
                for axes in (Budget(b), Budget(layers=b, heads=b)):
                    ds = m.decide(ids, axes, attention_mask=mask, mode=mode)
                    if mode == "strict":
                        for d in ds:
                            limit = max(2, int(axes.layers * L + 1e-9))  # router + last layer are always on
                            assert sum(d.layers) <= limit
                            assert all(sum(r) <= max(1, int(axes.heads * G + 1e-9))
                                       for i, r in enumerate(d.kv_groups or []) if d.layers[i] and i > 0)
                # nested in threshold mode on both axes; strict mode guarantees it along the layer axis
                ds = m.decide(ids, Budget(layers=b, heads=b if mode == "threshold" else 1.0), attention_mask=mask, mode=mode)
                if prev[mode] is not None:  # every row: kept at the lower budget => kept at this one
                    for lo, hi in zip(prev[mode], ds):
                        assert all(h or not lo_ for lo_, h in zip(lo.layers, hi.layers))
                        lo_g = lo.kv_groups or [[True] * G] * L
                        hi_g = hi.kv_groups or [[True] * G] * L
                        for i in range(L):
                            if lo.layers[i]:
                                assert all(h or not x for x, h in zip(lo_g[i], hi_g[i]))
                prev[mode] = ds


@torch.no_grad()
def test_decisions_are_input_aware_and_ablation_is_not(gm):
    ids, mask = batch_ids(6, 10, seed=7)
    ds = gm.decide(ids, Budget(layers=0.6, heads=0.7), attention_mask=mask)
    assert len({(d.layers, d.kv_groups) for d in ds}) > 1
    gm.policy.input_scale = 0.0  # budget-only ablation: every prompt gets the same decision
    ds = gm.decide(ids, Budget(layers=0.6, heads=0.7), attention_mask=mask)
    assert len({(d.layers, d.kv_groups) for d in ds}) == 1


@torch.no_grad()
def test_calibration_tracks_requests_the_raw_gates_never_reach():
    n_layers, n = 12, 24
    m = GatedModel(tiny_model("llama", n_layers=n_layers), tokenizer=tiny_tokenizer())
    torch.manual_seed(0)
    p = GatePolicy(GateConfig(n_layers=n_layers, n_groups=G, hidden=64, width=32))
    n_gate = len(p.config.gateable)
    with torch.no_grad():
        for prm in p.parameters():
            prm.normal_(0, 0.15)  # logits with std ~1 across prompts
        p.out.bias[:n_gate] -= 2.0  # raw gates that drop most layers at every budget (as trained gates can)
    p.eval()
    ps = [prompts(1, 5 + i % 7, seed=i)[0].tolist() for i in range(n)]
    mean = lambda b: sum(realized_layers(m, p, ps, 0, b)) / n
    grid = [round(0.3 + 0.05 * i, 2) for i in range(14)]
    assert max(mean(b) for b in [*grid, 0.99]) < 0.6  # saturated: no remapping of the budget reaches 0.6
    p.config.calibration = calibrate(m, p, ps, 0)
    for b in grid:  # on the calibration prompts, every grid request is met to one layer of one prompt
        assert abs(mean(b) - b) <= 1 / (n_layers * n) + 1e-9, b
    m.policy = p
    ids, mask = left_pad(prompts(6, 9, seed=50), [0, 1, 2, 3, 4, 5])
    prev = None
    for b in [*grid, 0.97, 1.0]:  # still nested per prompt, and budget 1.0 keeps everything
        ds = m.decide(ids, Budget(layers=b), attention_mask=mask)
        if prev is not None:
            assert all(h or not lo for d0, d1 in zip(prev, ds) for lo, h in zip(d0.layers, d1.layers))
        prev = ds
    assert all(all(d.layers) for d in prev)


def _setup(tmp_path, arch="llama"):
    m = GatedModel(tiny_model(arch, n_layers=L), tokenizer=tiny_tokenizer())
    for p in m.hf.parameters():
        p.requires_grad_(False)
    data = write_math(tmp_path / "math.jsonl", 60)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "gates"), steps=30, examples=4, max_len=48, width=32,
                      calib_prompts=8, save_every=10, dtype="float32", lr=1e-2, track=1.0, warm_start="block-influence")
    return m, cfg


def test_gradients_reach_every_gate_parameter(tmp_path):
    m, cfg = _setup(tmp_path)
    exs, _ = math_examples(cfg, m.tokenizer)
    ids, attn, pmask, amask = example_batch(exs[:4], 0)
    teacher, pooled = teacher_pass(m, ids, attn, pmask, 1)
    policy = GatePolicy(GateConfig(n_layers=L, n_groups=G, hidden=64, width=32))
    gen = torch.Generator().manual_seed(0)
    b_hi, b_lo = _sample_budgets(cfg, 4, gen)
    b_hi[:, 0], b_lo[:, 0] = 0.5, 0.3  # over budget at init: the cost term is active
    loss, terms, *_ = objective(m, policy, ids, attn, amask, teacher, pooled, b_hi, b_lo, 0.5, gen, cfg,
                                {"layers": 5.0, "heads": 5.0})
    loss.backward()
    for name, p in policy.named_parameters():
        if name.startswith("think"):
            continue  # the think head is trained by the reasoning-axis objective
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(torch.isfinite(t) for t in terms.values())


def _score_setup(tmp_path, bias, **over):
    """The score estimator's test bench: 512 samples, KL only, two examples, a policy with these 4 layer biases."""
    m, cfg = _setup(tmp_path)
    cfg = TrainConfig(**{**cfg.__dict__, "estimator": "score", "samples": 512, "dense_at_full": True,
                         "ce": 0.0, "agree": 0.0, "track": 0.0, **over})
    exs, _ = math_examples(cfg, m.tokenizer)
    ids, attn, pmask, amask = example_batch(exs[:2], 0)
    teacher, pooled = teacher_pass(m, ids, attn, pmask, 1)
    policy = GatePolicy(GateConfig(n_layers=L, n_groups=G, hidden=64, width=32))
    with torch.no_grad():
        policy.out.bias[:4] = torch.tensor(bias)
    return m, cfg, ids, attn, amask, teacher, pooled, policy


def _estimated_grad(m, cfg, ids, attn, amask, teacher, pooled, policy, b, lam):
    """The estimator's gradient of the task terms on the 4 layer biases, averaged over seeds 0 and 1."""
    got = torch.zeros(4)
    for seed in range(2):
        policy.zero_grad()
        gen = torch.Generator().manual_seed(seed)
        loss, terms, *_ = objective(m, policy, ids, attn, amask, teacher, pooled, b, b, 0.5, gen, cfg, lam)
        (loss - cfg.mono * terms["mono"]).backward()
        got += policy.out.bias.grad[:4] / 2
    return got


def test_score_estimator_is_unbiased_and_full_budget_rows_run_dense(tmp_path):
    import itertools

    from l2a.losses import row_kl

    m, cfg, ids, attn, amask, teacher, pooled, policy = _score_setup(tmp_path, [0.5, -0.3, 1.0, 0.0])
    b = torch.tensor([[0.6, 1.0, 1.0]] * 2)  # heads at 1.0: only the 4 gateable layers are sampled
    lam = {"layers": 0.0, "heads": 0.0}
    # exact d E[KL] / d logits, by enumerating the 16 layer sets
    gate = policy.config.gateable
    kl_of = {}
    for z in itertools.product([0, 1], repeat=4):
        d = GateDecision(layers=tuple(i not in gate or bool(z[gate.index(i)]) for i in range(L)))
        with torch.no_grad():
            out = torch.log_softmax(m.forward(ids, attn, decisions=[d, d])[:, :-1].float(), -1)
        kl_of[z] = row_kl(teacher, out, amask[:, 1:])  # (2,)
    p = torch.sigmoid(policy(pooled.repeat(2, 1), torch.cat([b, b])).layers)  # (4, 4)
    exact = sum((torch.where(torch.tensor(z, dtype=torch.bool), p, 1 - p).prod(-1) * kl_of[z].repeat(2)).mean()
                for z in kl_of)
    want = torch.autograd.grad(exact, policy.out.bias)[0][:4]
    got = _estimated_grad(m, cfg, ids, attn, amask, teacher, pooled, policy, b, lam)
    gen = torch.Generator().manual_seed(1)
    assert torch.allclose(got, want, atol=0.15 * want.abs().max()), (got, want)
    # rows at budget 1.0 run dense (as at inference): zero KL
    full = torch.ones(2, 3)
    _, terms, *_ = objective(m, policy, ids, attn, amask, teacher, pooled, full, b, 0.5, gen, cfg, lam)
    assert terms["kl_hi"].item() < 1e-5 and terms["kl"].item() > 1e-3


def test_plackett_luce_draws_and_log_probabilities_agree():
    import itertools

    from l2a.losses import gumbel_topk, plackett_luce_logp

    scores = torch.tensor([[0.5, -0.3, 1.0, 0.0, 2.0]])
    for k in (1, 2, 3):
        seqs = list(itertools.permutations(range(5), k))
        full = [list(q) + [i for i in range(5) if i not in q] for q in seqs]  # the rest's order does not count
        logp = plackett_luce_logp(scores.expand(len(seqs), 5), torch.tensor(full), torch.full((len(seqs),), k))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-5)  # a distribution over ordered draws
        q = seqs[3]
        want = 1.0
        left = list(range(5))
        for i in q:  # by hand: each item with probability exp(score) among those left
            want *= float(scores[0, i].exp() / scores[0, left].exp().sum())
            left.remove(i)
        assert logp[3].exp().item() == pytest.approx(want, rel=1e-5)
    # Gumbel-top-k draws sets with the Plackett-Luce probabilities: 20k draws of 2 of 5
    keep, order = gumbel_topk(scores.expand(20000, 5), torch.full((20000,), 2), torch.Generator().manual_seed(0))
    assert (keep.sum(-1) == 2).all() and torch.equal(keep.gather(1, order[:, :2]), torch.ones(20000, 2))
    for pair in itertools.combinations(range(5), 2):
        seqs = torch.tensor([list(pair) + [i for i in range(5) if i not in pair]] * 2)
        seqs[1, :2] = seqs[1, :2].flip(0)
        p = plackett_luce_logp(scores.expand(2, 5), seqs, torch.full((2,), 2)).exp().sum().item()
        freq = (keep[:, list(pair)].sum(-1) == 2).float().mean().item()
        assert abs(freq - p) < 4 * (p * (1 - p) / 20000) ** 0.5 + 1e-3, (pair, freq, p)


def test_topk_sampler_keeps_the_exact_count_and_is_unbiased(tmp_path):
    import itertools

    from l2a.baselines import kept_count
    from l2a.losses import row_kl

    m, cfg, ids, attn, amask, teacher, pooled, policy = _score_setup(tmp_path, [2.0, -1.0, 0.5, 0.0], sampler="topk")
    b = torch.tensor([[0.6, 1.0, 1.0]] * 2)  # kept_count(6, 0.6) = 4: 2 of the 4 gateable layers
    lam = {"layers": 0.0, "heads": 0.0}
    gate = policy.config.gateable
    kl_of = {}
    for pair in itertools.combinations(range(4), 2):
        d = GateDecision(layers=tuple(i not in gate or gate.index(i) in pair for i in range(L)))
        with torch.no_grad():
            out = torch.log_softmax(m.forward(ids, attn, decisions=[d, d])[:, :-1].float(), -1)
        kl_of[pair] = row_kl(teacher, out, amask[:, 1:])  # (2,)
    s = policy(pooled.repeat(2, 1), torch.cat([b, b])).layers  # (4, 4) scores, one row per (example, budget)
    w = s.exp()

    def p_set(i, j):  # by hand: i then j, or j then i
        return w[:, i] / w.sum(-1) * w[:, j] / (w.sum(-1) - w[:, i]) + w[:, j] / w.sum(-1) * w[:, i] / (w.sum(-1) - w[:, j])

    exact = sum((p_set(*pair) * kl_of[pair].repeat(2)).mean() for pair in kl_of)
    want = torch.autograd.grad(exact, policy.out.bias)[0][:4]
    seen = []
    forward = m.forward

    def spy(*a, decisions=None, **kw):  # every sampled set keeps exactly kept_count layers
        seen.extend(sum(d.layers) for d in decisions)
        return forward(*a, decisions=decisions, **kw)

    m.forward = spy
    try:
        got = _estimated_grad(m, cfg, ids, attn, amask, teacher, pooled, policy, b, lam)
    finally:
        m.forward = forward
    assert set(seen) == {kept_count(L, 0.6)}
    assert torch.allclose(got, want, atol=0.15 * want.abs().max()), (got, want)
    with pytest.raises(ValueError, match="topk needs estimator score"):
        TrainConfig(sampler="topk")


def test_training_lowers_the_objective_and_resumes(tmp_path):
    m, cfg = _setup(tmp_path)
    exs, _ = math_examples(cfg, m.tokenizer)
    ids, attn, pmask, amask = example_batch(exs[-4:], 0)
    teacher, pooled = teacher_pass(m, ids, attn, pmask, 1)
    lam = {"layers": 5.0, "heads": 5.0}

    def fixed_objective(policy):
        gen = torch.Generator().manual_seed(123)
        b_hi, b_lo = _sample_budgets(cfg, 4, gen)
        with torch.no_grad():
            return objective(m, policy, ids, attn, amask, teacher, pooled, b_hi, b_lo, 0.3, gen, cfg, lam)[0].item()

    init = GatePolicy(GateConfig(n_layers=L, n_groups=G, hidden=64, width=32))
    summary = train(cfg, model=m, progress=False)
    trained = load_gates(cfg.out, m.hf)
    assert fixed_objective(trained) < fixed_objective(init)
    log = [json.loads(x) for x in open(tmp_path / "gates" / "log.jsonl")]
    assert [r["step"] for r in log] == list(range(1, 31))
    assert summary["calibration"][-1][:2] == [1.0, 1.0]
    # refitting the calibration later (`l2a calibrate`) uses the same held-out prompts: same table
    assert recalibrate(m, cfg.out)["calibration"] == summary["calibration"]
    assert load_gates(cfg.out, m.hf).config.calibration == summary["calibration"]
    with pytest.raises(ValueError, match="held-out prompts exist"):
        recalibrate(m, cfg.out, prompts=1000)
    # resume: a longer run continues from the saved state, and is seeded/reproducible
    cfg2 = TrainConfig(**{**cfg.__dict__, "steps": 35})
    train(cfg2, model=m, progress=False)
    log = [json.loads(x) for x in open(tmp_path / "gates" / "log.jsonl")]
    assert [r["step"] for r in log] == list(range(1, 36))
    with pytest.raises(ValueError, match="another config"):
        train(TrainConfig(**{**cfg.__dict__, "lr": 0.5}), model=m, progress=False)
    # a state written before a config field existed resumes when the field has its default value
    state = tmp_path / "gates" / "train_state.json"
    meta = json.loads(state.read_text())
    del meta["config"]["cost"], meta["config"]["row_tol"]
    state.write_text(json.dumps(meta))
    train(cfg2, model=m, progress=False)
    with pytest.raises(ValueError, match="another config"):
        train(TrainConfig(**{**cfg2.__dict__, "cost": "batch"}), model=m, progress=False)


def test_greedy_kl_warm_start(tmp_path):
    from l2a.gatecheck import teacher_forced_kl
    from l2a.swap import greedy_kl_order

    m, cfg = _setup(tmp_path)
    exs, _ = math_examples(cfg, m.tokenizer)
    pairs, gate = exs[:6], [1, 2, 3, 4]
    order = greedy_kl_order(m, pairs, gate, n_remove=2, progress=False)
    assert sorted(order) == gate
    alone = {j: teacher_forced_kl(m, pairs, [GateDecision(layers=tuple(i != j for i in range(L)))] * 6, max_len=10**4)
             for j in gate}
    assert order[0] == min(alone, key=alone.get)  # the first removal is the cheapest one, by hand
    cfg = TrainConfig(**{**cfg.__dict__, "warm_start": "greedy-kl", "steps": 2, "save_every": 1})
    summary = train(cfg, model=m, progress=False)
    got = summary["warm_start_order"]
    assert sorted(got) == gate and json.loads(open(tmp_path / "gates" / "warm_start.json").read())["order"] == got
    p = load_gates(cfg.out, m.hf)
    with torch.no_grad():  # training starts from that ranking: the bias orders the layer logits
        bias = p.out.bias[: len(gate)]
    assert bias[gate.index(got[-1])] > bias[gate.index(got[0])] + 1.0
    with pytest.raises(ValueError, match="warm_start must be one of"):
        TrainConfig(warm_start="magic")


def test_batch_cost_lets_rows_trade_but_not_overspend_on_average():
    from l2a.losses import batch_cost_hinge, cost_hinge

    b = torch.tensor([0.7, 0.7, 1.0])
    traded = torch.tensor([0.78, 0.62, 0.9])  # one row above, one below by as much; the budget-1 row is left out
    assert cost_hinge(traded, b, 0.02).mean() > 0  # per request: the row above pays
    assert batch_cost_hinge(traded, b, 0.02, 0.1) == 0  # per batch: the mean is on budget, the row within 0.1
    far = torch.tensor([0.9, 0.5, 0.2])  # mean on budget again (the budget-1 row's slack does not count), one row 0.2 over
    assert batch_cost_hinge(far, b, 0.02, 0.1) == pytest.approx((0.2 - 0.1) ** 2 / 2)
    both = torch.tensor([0.8, 0.8, 1.0])  # every row 0.1 over: the mean pays past tol
    assert batch_cost_hinge(both, b, 0.02, 0.1) == pytest.approx((0.1 - 0.02) ** 2)
    assert batch_cost_hinge(torch.tensor([1.0]), torch.tensor([1.0]), 0.02, 0.1) == 0
    with pytest.raises(ValueError, match="cost must be"):
        TrainConfig(cost="global")


def test_row_mean_of_packed_positions_equals_the_full_form():
    from l2a.losses import row_mean

    g = torch.Generator().manual_seed(0)
    values, mask = torch.randn(5, 11, generator=g), (torch.rand(5, 11, generator=g) < 0.4).float()
    mask[2] = 0  # a row with no positions has mean 0
    full = row_mean(values, mask)
    assert torch.equal(row_mean(values[mask.bool()], mask), full)  # bit for bit: the objective relies on it
    assert torch.allclose(full[0], values[0][mask[0].bool()].mean()) and full[2] == 0


def test_gate_noise_scale_sets_the_keep_probability():
    from l2a.losses import gumbel_sigmoid

    logits = torch.tensor([-1.0, 0.0, 0.5, 2.0]).expand(20000, 4)
    gen = torch.Generator().manual_seed(0)
    for noise in (1.0, 0.2):  # the hard sample keeps with probability sigmoid(logit / noise): E[cost] in training
        keep = gumbel_sigmoid(logits, 0.5, generator=gen, noise=noise).mean(0)
        assert torch.allclose(keep, torch.sigmoid(logits[0] / noise), atol=0.015), (noise, keep)


def test_dual_step_signed_can_decrease_and_violations_cannot():
    under, over = torch.tensor([0.5, 0.6, 1.0]), torch.tensor([0.9, 0.9, 1.0])
    b = torch.tensor([0.7, 0.7, 1.0])  # the last row is at budget 1: it says nothing
    assert dual_step(10.0, under, b, TrainConfig()) == 10.0  # only violations count: never decreases
    signed = TrainConfig(dual="signed")
    assert dual_step(10.0, under, b, signed) == pytest.approx(10.0 + 20.0 * (-0.22 - 0.12) / 2)
    assert dual_step(0.5, under, b, signed) == 0.0  # projected to >= 0
    assert dual_step(10.0, over, b, signed) == pytest.approx(10.0 + 20.0 * 0.18)
    with pytest.raises(ValueError, match="dual must be"):
        TrainConfig(dual="both")


def test_topk_decisions_keep_the_highest_logits():
    from l2a.selection import topk_decisions

    p = random_policy()
    pooled = torch.randn(5, 64)
    gate = p.config.gateable
    for b in (0.5, 0.7, 1.0):
        with torch.no_grad():
            logits = p.gate_logits(p.features(pooled), torch.tensor([[b, 1.0]]).expand(5, 2))[0]
        for d, row in zip(topk_decisions(p, pooled, b), logits):
            assert sum(d.layers) == int(b * L + 1e-9) and d.layers[0] and d.layers[-1]
            kept = [float(row[j]) for j, i in enumerate(gate) if d.layers[i]]
            dropped = [float(row[j]) for j, i in enumerate(gate) if not d.layers[i]]
            assert not kept or not dropped or min(kept) > max(dropped)


def test_val_kl_selection_keeps_the_best_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from l2a.selection import Selector

    m, cfg = _setup(tmp_path)
    exs, _ = math_examples(cfg, m.tokenizer)
    sel = Selector(m, exs[-6:], 0, tmp_path)
    good, bad = random_policy(seed=1, scale=0.1), random_policy(seed=2, scale=0.1)
    with torch.no_grad():  # good drops first the layers whose removal alone costs least; bad the reverse
        order = sorted(range(4), key=lambda j: sel.score(_only(good, j)))
        good.out.bias[:4] = torch.tensor([10.0 * order.index(j) for j in range(4)])
        bad.out.bias[:4] = -good.out.bias[:4]
    first = sel.check(bad, 0)
    second = sel.check(good, 5)
    assert second["val_kl"] < first["val_kl"] and second["best_step"] == 5
    assert sel.check(bad, 10)["best_step"] == 5  # a worse checkpoint does not replace it
    restored = random_policy(seed=3)
    assert sel.restore(restored) == {"step": 5, "val_kl": second["val_kl"]}
    assert torch.equal(restored.out.bias, good.out.bias)
    assert Selector(m, exs[-6:], 0, tmp_path).best["step"] == 5  # a resumed run keeps it
    # in training: checks before the first step and every val_every steps; the artifact is the best one
    cfg = TrainConfig(**{**cfg.__dict__, "steps": 12, "val_every": 4, "select": "val-kl", "lr": 0.05})
    summary = train(cfg, model=m, progress=False)
    vals = [json.loads(x) for x in open(tmp_path / "gates" / "log.jsonl") if "val_kl" in x]
    assert [r["step"] for r in vals] == [0, 4, 8, 12]
    best = min(vals, key=lambda r: r["val_kl"])
    assert summary["selected"] == {"step": best["step"], "val_kl": best["val_kl"]}
    saved = load_file(str(tmp_path / "gates" / "best_policy.safetensors"))
    assert torch.equal(load_gates(cfg.out, m.hf).out.bias, saved["out.bias"])


def test_val_exact_scores_the_sets_l2a_exact_runs(tmp_path):
    from l2a.losses import token_kl
    from l2a.selection import Selector

    m, cfg = _setup(tmp_path)
    pairs = math_examples(cfg, m.tokenizer)[0][-6:]
    p = random_policy(seed=1, scale=0.01)
    rank = [2, 0, 3, 1]  # gateable layers (1..4) best first: every logit positive, so exact mode ranks by them
    with torch.no_grad():
        p.out.bias[:4] = torch.tensor([40.0 - 10 * rank.index(j) for j in range(4)])
    exact = Selector(m, pairs, 0, tmp_path / "e", budgets=(0.6, 0.5), exact=True)
    topk = Selector(m, pairs, 0, tmp_path / "t", budgets=(0.6, 0.5))

    def kl_of(n_kept):  # by hand: the first and last layer and the n_kept - 2 best gateable ones
        keep = [True] + [j in rank[: n_kept - 2] for j in range(4)] + [True]
        logits = m.forward(exact.ids, exact.attn, decisions=[GateDecision(layers=tuple(keep))] * len(pairs))
        return token_kl(exact.dense, logits[:, :-1], exact.mask).item()

    # exact keeps the baselines' count, round(b * L): 4 and 3 of 6; top-k keeps floor(b * L): 3 and 3
    assert exact.score(p) == pytest.approx((kl_of(4) + kl_of(3)) / 2, abs=1e-6)
    assert topk.score(p) == pytest.approx(kl_of(3), abs=1e-6)
    assert kl_of(4) != pytest.approx(kl_of(3))  # the test can tell the two counts apart
    with pytest.raises(ValueError, match="val_budgets"):
        TrainConfig(val_budgets=[0.7, 1.0])
    with pytest.raises(ValueError, match="select one of last|val-kl|val-exact"):
        TrainConfig(select="val")
    # in training: the checks log the exact-mode KL at the given budgets; the artifact is the best checkpoint
    cfg = TrainConfig(**{**cfg.__dict__, "steps": 8, "val_every": 4, "select": "val-exact", "val_budgets": [0.7, 0.5]})
    summary = train(cfg, model=m, progress=False)
    vals = [json.loads(x) for x in open(tmp_path / "gates" / "log.jsonl") if "val_kl" in x]
    assert [r["step"] for r in vals] == [0, 4, 8]
    assert summary["selected"]["val_kl"] == min(r["val_kl"] for r in vals)
    assert summary["config"]["val_budgets"] == [0.7, 0.5]
    assert all(r["val_kl"] == pytest.approx(sum(r["val_kl_at"].values()) / 2, abs=1e-4) for r in vals)


def _only(policy, j):
    """A copy of `policy` whose layer logits put gateable layer j last (dropped first)."""
    p = copy.deepcopy(policy)
    with torch.no_grad():
        p.out.bias[:4] = 10.0
        p.out.bias[j] = -10.0
    return p


def test_artifact_round_trip_and_mismatch(tmp_path):
    base = tiny_model("qwen2", n_layers=L)
    p = random_policy(1)
    p.config.calibration = [[0.5, 0.6], [1.0, 1.0]]
    save_gates(p, tmp_path / "a", base, extra={"note": "test"})
    q = load_gates(tmp_path / "a", base)
    assert q.config == p.config
    for (k1, v1), (k2, v2) in zip(p.state_dict().items(), q.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    pooled = torch.randn(5, 64)
    bs = [Budget(0.5), Budget(0.7), Budget(layers=0.6, heads=0.5), Budget(0.9), Budget(1.0)]
    assert p.decisions(pooled, bs) == q.decisions(pooled, bs)
    # same architecture, other weights: refused
    with pytest.raises(ValueError, match="different weights"):
        load_gates(tmp_path / "a", tiny_model("qwen2", n_layers=L, seed=5))
    # other architecture: refused, naming what differs
    with pytest.raises(ValueError, match="num_hidden_layers"):
        load_gates(tmp_path / "a", tiny_model("qwen2", n_layers=4))
    with pytest.raises(FileNotFoundError, match="not a gate artifact"):
        load_gates(tmp_path / "missing", base)
    # a bf16 copy of the same base is the same base
    load_gates(tmp_path / "a", copy.deepcopy(base).to(torch.bfloat16))


def test_depth_oracle_by_hand():
    from l2a.gatecheck import depth_oracle

    # two chains of 10 tokens, 1 or 2 or 3 layers: chain 0 gains much from a second layer, chain 1 little
    sums = torch.tensor([[9.0, 4.0], [3.0, 3.5], [2.5, 3.0]])  # (K, N) KL sums at counts 1, 2, 3
    n = torch.tensor([10.0, 10.0])
    d = depth_oracle(sums, n, [1, 2, 3], 2)
    assert d["fixed"] == 6.5 / 20 and d["per_chain_oracle"] == 6.5 / 20  # (3, 1) only ties (2, 2): 2.5 + 4
    d = depth_oracle(sums, n, [1, 2, 3], 1.5)  # mean 1.5: chain 0 at 2 and chain 1 at 1 -> 3 + 4 = 7
    assert d["fixed"] is None and abs(d["per_chain_oracle"] - 7 / 20) < 1e-12
    # unequal lengths: compute is token-weighted, so the long chain's extra layer costs more
    d = depth_oracle(torch.tensor([[9.0, 8.0], [3.0, 7.0]]), torch.tensor([10.0, 30.0]), [1, 2], 1.25)
    assert abs(d["per_chain_oracle"] - 11 / 40) < 1e-12  # chain 0 at 2 layers, chain 1 at 1: mean (20 + 30) / 40
    with pytest.raises(ValueError, match="outside the counts"):
        depth_oracle(sums, n, [1, 2, 3], 3.5)


def test_length_rule_gives_layers_to_the_prompts_that_need_them():
    from l2a.gatecheck import length_rule

    # 40 chains of 10 tokens at 20, 21, 22 layers; short prompts lose much from a missing layer, long ones little
    sensitive, robust = torch.tensor([30.0, 20.0, 10.0]), torch.tensor([11.0, 10.0, 9.0])  # KL sums (K,)
    n = torch.full((40,), 10.0)
    short = torch.arange(40) % 2 == 0  # (N,)
    sums = torch.where(short[None], sensitive[:, None], robust[:, None])  # (K, N)
    lens = [10 if s else 50 for s in short]
    r = length_rule(sums, n, [20, 21, 22], 21, lens)
    assert r["fixed"] == pytest.approx((20 * 20 + 20 * 10) / 400)
    assert r["in_sample"] < r["fixed"] and r["cv_gain_min"] > 0.1 and r["alpha_in_sample"] > 0
    # when long prompts are the sensitive ones the rule (shorter -> more) is never chosen: no gain, none claimed
    r = length_rule(sums, n, [20, 21, 22], 21, [50 if s else 10 for s in short])
    assert r["alpha_in_sample"] == 0 and r["cv_gain_max"] == 0 and r["in_sample"] == r["fixed"]


def test_check_gates_reports_every_property(tmp_path):
    from l2a.gatecheck import check_gates, render
    from l2a.static import Calibration

    m = GatedModel(tiny_model("llama", n_layers=L), tokenizer=tiny_tokenizer())
    m.policy = random_policy(2)
    data = str(write_math(tmp_path / "test.jsonl", 12))
    abl = random_policy(2)
    abl.input_scale = 0.0
    res = check_gates(m, data=data, limit=12, kl_limit=6, ablation=abl, progress=False,
                      calibration=Calibration(path=data, n=8), warm_order=[4, 2, 1, 3], headroom=True)
    assert res["n_prompts"] == 12 and res["nested_share"] == 1.0  # nested by construction
    assert not res["strict_ever_exceeds"]
    assert [t["requested"] for t in res["tracking"]][0] == 0.5
    from l2a.gatecheck import _corr

    assert _corr([1, 2, 3], [2, 4, 7]) == pytest.approx(0.9933, abs=1e-4) and _corr([1, 2, 3], [5, 5, 5]) is None
    assert all(t["length_corr"] is None or -1 <= t["length_corr"] <= 1 for t in res["tracking"])
    assert res["kl"]["ablation"]["distinct_decisions"] == 1
    assert res["kl"]["greedy-kl (warm start, static)"]["realized_layers"] == 4 / L  # layers 4 and 2 dropped
    for v in res["kl"].values():
        assert v["kl"] >= 0 and 0 < v["realized_layers"] <= 1
    assert "KL reduction" in render(res) and "interpolated" in render(res) and "headroom" in render(res)
    h = res["headroom"]  # the greedy set and its boundary swaps (4 and 2 dropped; 1 or 3 out, 4 or 2 back in)
    assert h["sets"] == 5 and abs(h["greedy"] - res["kl"]["greedy-kl (warm start, static)"]["kl"]) < 1e-6
    assert h["per_chain_oracle"] <= h["best_static"] + 1e-9 <= h["greedy"] + 2e-9
    d = res["depth_headroom"]  # the greedy order at 2..6 kept layers; the fixed count is the warm start's set
    assert d["counts"] == [2, 6] and abs(d["fixed"] - h["greedy"]) < 1e-6 and d["per_chain_oracle"] <= d["fixed"] + 1e-9
    assert res["depth_by_prompt_length"]["in_sample"] <= d["fixed"] + 1e-9 and "prompt length" in render(res)
    # equal realized compute: the static KL interpolated between the layer counts around l2a's fraction, by hand
    from l2a.gatecheck import _prompts_and_answers, teacher_forced_kl
    from l2a.baselines import make_method

    pairs = _prompts_and_answers(m, data, 12)[0][:6]
    ang = make_method("angular", calibration=Calibration(path=data, n=8))
    at = {c: teacher_forced_kl(m, pairs, ang.decide(m, None, None, [Budget(layers=c / L)] * 6)) for c in range(2, L + 1)}
    for mode in ("threshold", "strict"):
        f = res["kl"][f"l2a-{mode}"]["realized_layers"] * L
        c0 = int(f + 1e-9)
        want = at[c0] + (f - c0) * (at[min(L, c0 + 1)] - at[c0])
        assert abs(res["kl_static_at_equal_layers"][mode]["angular"] - want) < 1e-6
        best = min(res["kl_static_at_equal_layers"][mode][k] for k in ("angular", "block-influence"))
        assert abs(res["kl_reduction_vs_best_static_equal_layers"][mode] - (1 - res["kl"][f"l2a-{mode}"]["kl"] / best)) < 1e-9
        lo, hi = res["kl_reduction_vs_best_static_equal_layers_ci95"][mode]
        assert lo <= res["kl_reduction_vs_best_static_equal_layers"][mode] + 1e-9 and lo <= hi
    # the ablation at equal layers: its own top-c sets at the counts around l2a's, interpolated, by hand
    from l2a.selection import topk_decisions
    from l2a.examples import pooled_prompts

    pooled = pooled_prompts(m, abl, [p for p, _ in pairs], m.tokenizer.pad_token_id or 0)
    f = res["kl"]["l2a-threshold"]["realized_layers"] * L
    c0 = min(L - 1, int(f + 1e-9))
    at = {c: teacher_forced_kl(m, pairs, topk_decisions(abl, pooled, c / L)) for c in (c0, c0 + 1)}
    assert abs(res["kl"]["ablation"]["kl"] - (at[c0] + (f - c0) * (at[c0 + 1] - at[c0]))) < 1e-6
    lo, hi = res["kl_reduction_vs_ablation"]["ci95"]
    assert lo <= res["kl_reduction_vs_ablation"]["threshold"] + 1e-9 and hi >= res["kl_reduction_vs_ablation"]["threshold"] - 1e-9
    # and at l2a's answer-token-weighted count, by hand from its own decisions and the chains' answer tokens
    from l2a.scoring import left_pad as pad_prompts

    ds = []
    for p, _ in pairs:  # one prompt at a time
        ids, mask = pad_prompts([p], 0)
        ds.append(m.decide(ids, Budget(layers=0.7), attention_mask=mask)[0])  # one prompt at a time
    n_tok = torch.tensor([float(min(len(a), 320 - len(p))) for p, a in pairs])
    f_w = float((torch.tensor([d.layer_fraction for d in ds]) * n_tok).sum() / n_tok.sum()) * L
    w = res["kl_reduction_vs_ablation"]["token_weighted"]
    assert abs(w["realized_layers"] * L - f_w) < 1e-6
    c0 = min(L - 1, int(f_w + 1e-9))
    at = {c: teacher_forced_kl(m, pairs, topk_decisions(abl, pooled, c / L)) for c in (c0, c0 + 1)}
    assert abs(w["ablation_kl"] - (at[c0] + (f_w - c0) * (at[c0 + 1] - at[c0]))) < 1e-6
    assert "token-weighted" in render(res)
    # without the static baselines: the same ablation comparison, and no static or strict-mode KL
    alone = check_gates(m, data=data, limit=12, kl_limit=6, ablation=abl, progress=False, static=False)
    assert alone["kl_reduction_vs_ablation"] == res["kl_reduction_vs_ablation"]
    assert set(alone["kl"]) == {"l2a-threshold", "ablation"} and "kl_reduction_vs_best_static" not in alone
    assert "ablation" in render(alone) and "BI/angular" not in render(alone)


def test_reduction_ci_is_paired_over_chains():
    from l2a.gatecheck import reduction_ci

    theirs = torch.tensor([1.0, 4.0, 2.0, 8.0, 3.0])
    assert reduction_ci(theirs, theirs) == [0.0, 0.0]
    assert all(abs(x - 0.5) < 1e-12 for x in reduction_ci(theirs / 2, theirs))  # the same on every resample
    ours = theirs * torch.tensor([0.5, 1.0, 0.5, 1.0, 0.5])  # halved on three chains: 1 - 16/18 overall
    lo, hi = reduction_ci(ours, theirs)
    assert 0 <= lo < 1 - ours.sum() / theirs.sum() < hi <= 0.5  # resamples range from no halved chain to all


def test_warm_text_adds_prose_windows_to_the_greedy_search(tmp_path, monkeypatch):
    import l2a.prose
    import l2a.swap
    from l2a.train import WARM_PAIRS

    text = "The quick brown fox jumps over the lazy dog, then rests. " * 40  # ~2,300 characters
    wins = l2a.prose.windows(tiny_tokenizer(), [text, text[:100]], n=50, seed=0)
    assert len(wins) == len(tiny_tokenizer()(text)["input_ids"]) // 160  # whole windows of the long text only
    assert all(len(p) == l2a.prose.PROMPT and len(a) == l2a.prose.ANSWER for p, a in wins)
    assert l2a.prose.windows(tiny_tokenizer(), [text], n=3, seed=0) == wins[:3]  # seeded: a prefix of the same order

    seen = []
    real = l2a.swap.greedy_kl_order
    monkeypatch.setattr(l2a.prose, "docstrings", lambda: [text])
    monkeypatch.setattr(l2a.swap, "greedy_kl_order", lambda m, pairs, *a, **k: seen.append(pairs) or real(m, pairs, *a, **k))
    m, cfg = _setup(tmp_path)
    cfg = TrainConfig(**{**cfg.__dict__, "warm_start": "greedy-kl", "warm_text": 3, "steps": 1, "save_every": 1})
    train(cfg, model=m, progress=False)
    assert len(seen) == 1 and len(seen[0]) == WARM_PAIRS + 3 and seen[0][-3:] == l2a.prose.windows(m.tokenizer, [text], 3, cfg.seed)
    with pytest.raises(ValueError, match="warm_text needs warm_start greedy-kl"):
        TrainConfig(warm_text=4)
    with pytest.raises(ValueError, match="warm_text needs"):
        TrainConfig(warm_start="greedy-kl", warm_text=-1)


def test_train_text_mixes_unsearched_prose_windows_into_each_step(tmp_path, monkeypatch):
    import l2a.prose
    import l2a.train
    from l2a.examples import example_order, math_examples
    from l2a.mix import HELD as PROSE_HELD

    text = "A plain sentence about rivers, towns and the weather in spring. " * 300  # ~19,000 characters
    monkeypatch.setattr(l2a.prose, "docstrings", lambda: [text])
    batches, fitted = [], []
    real_batch = l2a.train.example_batch
    monkeypatch.setattr(l2a.train, "example_batch", lambda exs, pad: batches.append(list(exs)) or real_batch(exs, pad))
    real_fit = GatePolicy.fit_input
    monkeypatch.setattr(GatePolicy, "fit_input", lambda self, pooled: fitted.append(len(pooled)) or real_fit(self, pooled))
    m, cfg = _setup(tmp_path)
    cfg = TrainConfig(**{**cfg.__dict__, "max_len": 160, "train_text": 0.5, "steps": 3, "save_every": 3, "calib_prompts": 4})
    train(cfg, model=m, progress=False)
    wins = l2a.prose.windows(m.tokenizer, [text], 10**9, cfg.seed)
    assert len(wins) > PROSE_HELD + 6
    exs, _ = math_examples(cfg, m.tokenizer)
    train_idx = example_order(cfg, len(exs))[cfg.calib_prompts :]
    for step, b in enumerate(batches):  # 2 task examples then 2 prose windows, each in its own order
        assert b[:2] == [exs[train_idx[2 * step + j]] for j in range(2)]
        assert b[2:] == wins[PROSE_HELD + 2 * step : PROSE_HELD + 2 * step + 2]  # never the held-out windows
    assert len(batches) == 3 and fitted[0] == min(128, len(train_idx)) + min(128, len(wins) - PROSE_HELD)  # router input: both, as drawn
    with pytest.raises(ValueError, match="train_text must be in"):
        TrainConfig(train_text=1.0)
    with pytest.raises(ValueError, match="at least one prose example"):
        TrainConfig(train_text=0.1, examples=4)
    with pytest.raises(ValueError, match="max_len >= 160"):
        train(TrainConfig(**{**cfg.__dict__, "max_len": 48, "out": str(tmp_path / "short")}), model=m, progress=False)


def test_mix_mc_trains_on_correct_choice_pairs_the_search_never_sees(tmp_path, monkeypatch):
    import json

    import l2a.swap
    import l2a.train
    from l2a.examples import example_order
    from l2a.mix import HELD, calibration_pairs, ordered
    from l2a.train import WARM_PAIRS

    words = "red green blue amber violet".split()
    rows = [{"question": f"Which colour is item {i}?", "choices": words[: 2 + i % 3], "answer": i % 2} for i in range(80)]
    rows += [{"question": "", "choices": [f"The {w} box fell because it was heavy." for w in words[:2]], "answer": 1}]  # WinoGrande form
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = tiny_tokenizer()
    pairs = ordered(tok, 0, [str(mc)])
    assert len(pairs) == len(rows) and pairs == ordered(tok, 0, [str(mc)]) and pairs != ordered(tok, 1, [str(mc)])
    decoded = {(tok.decode(p, skip_special_tokens=True), tok.decode(a)) for p, a in pairs}
    for r in rows[:80]:  # the evaluation's decision prompt, then the correct choice
        assert (f"Question: {r['question']}\nAnswer:", " " + r["choices"][r["answer"]]) in decoded
    assert ("The", " violet box fell because it was heavy.") not in decoded  # only the correct choice is trained on
    assert any(a.endswith("green box fell because it was heavy.") for _, a in decoded)

    batches, seen = [], []
    real_batch, real_search = l2a.train.example_batch, l2a.swap.greedy_kl_order
    monkeypatch.setattr(l2a.train, "example_batch", lambda exs, pad: batches.append(list(exs)) or real_batch(exs, pad))
    monkeypatch.setattr(l2a.swap, "greedy_kl_order", lambda m, prs, *a, **k: seen.append(prs) or real_search(m, prs, *a, **k))
    m, cfg = _setup(tmp_path)
    cfg = TrainConfig(**{**cfg.__dict__, "train_text": 0.5, "mix_mc": [str(mc)], "warm_start": "greedy-kl", "warm_text": 2,
                         "steps": 3, "save_every": 3, "calib_prompts": 4})
    train(cfg, model=m, progress=False)
    mixed = ordered(m.tokenizer, cfg.seed, cfg.mix_mc)
    assert seen[0][-2:] == mixed[:2]  # the search adds the front of the order
    drawn = [(p, a) for p, a in mixed[HELD:] if len(p) + len(a) <= cfg.max_len]  # then training, after the front
    steps = [b for b in batches if len(b) == cfg.examples]  # training's steps (train.example_batch's calls)
    assert len(steps) == 3 and len(drawn) > 6 and len(seen[0]) == WARM_PAIRS + 2
    for step, b in enumerate(steps):
        assert b[2:] == drawn[2 * step : 2 * step + 2]
    # the calibration table is fit on the task's held-out prompts and, in the training share, held-out pairs:
    # those the search did not use first (never the drawn ones); the realized mean on both together tracks
    calib = calibration_pairs(cfg, m.tokenizer)
    assert calib == mixed[2:6] and not {tuple(p) for p, _ in calib} & {tuple(p) for p, _ in drawn}
    summary = json.loads((tmp_path / "gates" / "l2a_config.json").read_text())["training"]
    exs, _ = math_examples(cfg, m.tokenizer)
    task = [exs[i][0] for i in example_order(cfg, len(exs))[: cfg.calib_prompts]]
    policy = load_gates(cfg.out, m.hf)
    pool = task + [p for p, _ in calib]
    for b in (0.8, 0.6, 0.4):
        assert abs(sum(realized_layers(m, policy, pool, 0, b)) / len(pool) - b) <= 1 / (L * len(pool)) + 1e-9, b
    assert set(summary["calibration_tracking"]) == {"task", "mc"}
    assert summary["calibration_tracking"]["mc"]["0.7"] == round(sum(realized_layers(m, policy, pool[4:], 0, 0.7)) / 4, 4)
    assert recalibrate(m, cfg.out)["prompts"] == {"task": 4, "mc": 4}
    assert load_gates(cfg.out, m.hf).config.calibration == summary["calibration"]  # refit on the same prompts
    assert calibration_pairs(TrainConfig(**{**cfg.__dict__, "calib_mix": False}), m.tokenizer) == []
    train(cfg, model=m, progress=False)  # resumes: the saved config (a JSON list) equals the one given
    with pytest.raises(ValueError, match="second source"):
        TrainConfig(mix_mc=[str(mc)])
    with pytest.raises(FileNotFoundError):
        train(TrainConfig(**{**cfg.__dict__, "mix_mc": [str(tmp_path / "none.jsonl")], "out": str(tmp_path / "g2")}),
              model=m, progress=False)
