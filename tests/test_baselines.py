"""Static baselines: every method realizes exactly the budget's layer and group counts; BI and angular
pick what a hand computation picks; calibration hooks see the same residual stream as HF; the registry."""

import json
import math

import pytest
import torch
from chartok import char_tokenizer
from conftest import tiny_model

from l2a import static, swap
from l2a.baselines import (METHODS, drop_block, keep_most_important, kept_count, make_method, random_decision,
                           top_groups)
from l2a.budget import Budget
from l2a.data import generate_gsm8k
from l2a.decision import GateDecision
from l2a.gated import GatedModel
from l2a.policy import Policy

L = 6


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate_gsm8k(6)))
    return path


@pytest.fixture(scope="module")
def gm():
    return GatedModel(tiny_model("qwen2", n_layers=L), tokenizer=char_tokenizer())


BUDGETS = [Budget(1.0), Budget(0.85), Budget(0.7), Budget(0.55), Budget(0.3), Budget(layers=0.5, heads=0.5),
           Budget(layers=1.0, heads=0.25)]
STATIC = ["even-spaced", "drop-last", "random", "block-influence", "angular", "greedy-kl", "greedy-swap", "block-swap", "static-groups"]


@pytest.mark.parametrize("method", STATIC)
def test_realized_cost_is_exactly_the_budget(gm, calib_file, method):
    policy = make_method(method, seed=1, calibration=static.Calibration(path=str(calib_file), n=6, max_tokens=48))
    assert isinstance(policy, Policy)
    ids = torch.randint(4, 100, (2, 5))
    G = gm.n_groups
    for b in BUDGETS:
        ds = policy.decide(gm, ids, None, [b, b])
        assert len(ds) == 2 and ds[0] == ds[1]  # static: input-agnostic
        d = ds[0]
        k = kept_count(L, b.layers)
        assert sum(d.layers) == k, (method, b)
        assert set(d.kept_groups_per_layer(G)) - {0} == {kept_count(G, b.heads)}, (method, b)
        if method == "drop-last":
            assert d.layers == tuple(i < k for i in range(L))
        elif k >= 2:
            assert d.layers[0] and d.layers[-1]  # first and last protected


def test_keep_most_important_by_hand():
    bi = [5.0, 0.1, 3.0, 0.2, 4.0, 9.0]
    # k = 3: first and last protected, then the highest of the middle (layer 4).
    assert keep_most_important(bi, 6, 0.5).kept_layers == (0, 4, 5)
    assert keep_most_important(bi, 6, 0.5, protect=False).kept_layers == (0, 4, 5)
    assert keep_most_important(bi, 6, 0.7).kept_layers == (0, 2, 4, 5)
    assert keep_most_important(bi, 6, 0.1).kept_layers == (0,)


def test_drop_block_by_hand():
    n = 6
    dist = [[abs(i - j) * 1.0 for j in range(n + 1)] for i in range(n + 1)]
    dist[2][4] = 0.1  # dropping layers 2, 3 joins two nearly equal streams
    dist[0][2] = 0.0  # would drop layer 0: the first layer is protected
    d = drop_block(dist, n, 4 / 6)
    assert d.kept_layers == (0, 1, 4, 5)
    dist[4][6] = 0.0  # would drop the last layer: never
    assert drop_block(dist, n, 4 / 6).kept_layers == (0, 1, 4, 5)
    assert drop_block(dist, n, 1.0) == GateDecision.dense(n)


def synthetic_stream():
    """h_0..h_4 (L=4): layer 1 barely changes the stream, layer 2 turns it by 90 degrees."""
    h0 = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.2, 0.0]], dtype=torch.float64)  # (N=2, H=3)
    h1 = h0 + torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)  # layer 0: a real turn
    h2 = h1 * 1.01  # layer 1: nearly the identity (same direction)
    h3 = torch.stack([torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)] * 2)  # layer 2: orthogonal to h2
    h4 = h3 + torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64)  # layer 3: small turn
    return torch.stack([h0, h1, h2, h3, h4]).double()  # (L+1, N, H)


def test_block_influence_and_angular_by_hand():
    hs = synthetic_stream()
    bi = static.block_influence(hs)
    for l in range(4):
        cos = [float(torch.dot(hs[l, n], hs[l + 1, n]) / (hs[l, n].norm() * hs[l + 1, n].norm())) for n in range(2)]
        assert bi[l].item() == pytest.approx(1 - sum(cos) / 2, abs=1e-9)
    assert bi[1].item() == pytest.approx(0.0, abs=1e-9) and bi[2].item() == pytest.approx(1.0, abs=1e-9)
    # ShortGPT at k=3 of 4: layers 0 and 3 protected; of 1 and 2, the lower BI (layer 1) goes.
    assert keep_most_important(bi.tolist(), 4, 0.75).kept_layers == (0, 2, 3)
    ang = static.angular_distance(hs)
    assert ang[2, 3].item() == pytest.approx(0.5, abs=1e-9)  # orthogonal: arccos(0) / pi
    assert ang[1, 2].item() == pytest.approx(0.0, abs=1e-6)
    assert ang[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    # d(h_0, h_1): row 0 turns by 45 degrees (0.25), row 1 by arccos(1.24 / sqrt(1.04 * 2.44)) / pi.
    want = (0.25 + math.acos(1.24 / math.sqrt(1.04 * 2.44)) / math.pi) / 2
    assert ang[0, 1].item() == pytest.approx(want, abs=1e-9)
    # Gromov at n = 1: the block of one layer with the smallest d(h_l, h_{l+1}) among l = 1..2 is layer 1.
    assert drop_block(ang.tolist(), 4, 0.75).kept_layers == (0, 2, 3)


def test_greedy_kl_removes_layers_in_the_searched_order(gm, calib_file, monkeypatch, _static_cache):
    """The greedy-kl baseline drops the first layers of greedy_kl_order run on the calibration items (chat
    prompt + answer, as training's warm-start search sees them), nested across budgets; searched once per
    model and items, then read back from disk."""
    cal = static.Calibration(path=str(calib_file), n=4, max_tokens=48)
    calls = []
    real = swap.greedy_kl_order
    monkeypatch.setattr(swap, "greedy_kl_order", lambda m, pairs, *a, **k: calls.append((pairs, a)) or real(m, pairs, *a, **k))
    policy = make_method("greedy-kl", calibration=cal)
    policy.prepare(gm)
    order = static.greedy_order_for(gm, cal)
    (pairs, (candidates, n_remove)), = calls  # one search, cached for the model
    assert candidates == list(range(1, L - 1)) and n_remove == L - math.ceil(static.GREEDY_FLOOR * L)
    assert len(pairs) == 4 and all(len(p) + len(a) <= static.GREEDY_MAX_LEN and a for p, a in pairs)
    assert sorted(order) == candidates
    ids = torch.randint(4, 100, (1, 5))
    kept = []
    for b in (1.0, 0.85, 0.7, 0.55, 0.3):
        d = policy.decide(gm, ids, None, [Budget(layers=b)])[0]
        dropped = [i for i, keep in enumerate(d.layers) if not keep]
        assert sorted(dropped) == sorted(order[: L - kept_count(L, b)])  # the order's front, first and last kept
        kept.append(set(i for i, keep in enumerate(d.layers) if keep))
    assert all(a >= b for a, b in zip(kept, kept[1:]))  # nested

    static._ORDERS.clear()  # a later run: read back from disk, not searched again
    assert static.greedy_order_for(gm, cal) == order and len(calls) == 1
    (saved,) = _static_cache.glob("greedy-kl-*.json")
    assert json.loads(saved.read_text())["order"] == order
    other = static.Calibration(path=str(calib_file), n=3, max_tokens=48)  # other items: another search
    static.greedy_order_for(gm, other)
    assert len(calls) == 2 and len(list(_static_cache.glob("greedy-kl-*.json"))) == 2
    static._ORDERS.clear()
    with torch.no_grad():
        gm.hf.lm_head.weight.mul_(1.5)  # another model: another key
    try:
        static.greedy_order_for(gm, cal)
        assert len(calls) == 3
    finally:
        with torch.no_grad():
            gm.hf.lm_head.weight.div_(1.5)
        static._ORDERS.clear()


def test_fingerprint_samples_stay_inside_large_tensors():
    for n in (1, 2, 63, 64, 65, 28_311_552, 2**31 + 7):  # 28.3M: SmolLM2's embedding, where float steps overran
        idx = static._spread(n)
        assert int(idx[0]) == 0 and int(idx[-1]) == n - 1 and len(set(idx.tolist())) == min(64, n)


def test_calibration_hooks_see_the_residual_stream(gm):
    seqs = [list(range(5, 17)), list(range(30, 37))]  # unequal lengths: the batch is left-padded
    got = static.calibrate(gm, seqs, batch_size=2)
    layers = gm.hf.model.layers
    outs = []
    hook = layers[-1].base_layer.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o))
    per_seq = []
    try:
        with torch.no_grad():
            for s in seqs:  # one at a time, unpadded: the reference
                hs = gm.hf(torch.tensor([s]), output_hidden_states=True).hidden_states
                per_seq.append(torch.stack(list(hs[:-1]) + [outs[-1]])[:, 0])  # (L+1, T, H): last one pre-norm
    finally:
        hook.remove()
    tokens = torch.cat(per_seq, dim=1)  # (L+1, N, H)
    assert got.tokens == sum(map(len, seqs))
    assert torch.allclose(torch.tensor(got.bi), static.block_influence(tokens).float(), atol=1e-4)
    last = torch.stack([p[:, -1] for p in per_seq], dim=1)  # (L+1, 2, H)
    assert torch.allclose(torch.tensor(got.angular), static.angular_distance(last).float(), atol=1e-3)
    assert len(got.groups) == L and all(len(g) == gm.n_groups and min(g) > 0 for g in got.groups)


def test_group_importance_finds_a_dead_group(calib_file):
    hf = tiny_model("llama", n_layers=4, seed=3)
    with torch.no_grad():  # group 2 of layer 1 contributes nothing: zero its o_proj input columns
        w = hf.model.layers[1].self_attn.o_proj.weight  # (H, nq*D): 2 query heads of width 8 per group
        w[:, 2 * 16:3 * 16] = 0
    gm = GatedModel(hf, tokenizer=char_tokenizer())
    stats = static.calibrate(gm, [list(range(5, 25))])
    assert stats.groups[1][2] == 0 and min(stats.groups[0]) > 0
    d = top_groups(stats.groups, 4, 0.75, GateDecision.dense(4))
    assert d.kv_groups[1] == (True, True, False, True)


def test_random_is_seeded():
    a = [random_decision(12, 4, 0.5, 0.5, seed=s) for s in (0, 0, 1)]
    assert a[0] == a[1] and a[0] != a[2]


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown method 'shortgpt'; valid: dense, l2a"):
        make_method("shortgpt")
    with pytest.raises(ValueError, match="tuned-static needs --tuned-gates DIR"):
        make_method("tuned-static")
    assert {"dense", "l2a", "even-spaced", "drop-last", "random", "block-influence", "angular",
            "static-groups", "tuned-static", "think-cap"} <= set(METHODS)


def test_think_cap_caps_every_prompt_alike():
    m = GatedModel(tiny_model("llama", n_layers=4), tokenizer=char_tokenizer())
    p = make_method("think-cap")
    ds = p.decide(m, torch.ones(3, 5, dtype=torch.long), None, [Budget(think=0.25)] * 3)
    assert all(d.think_tokens == 64 and d.layer_fraction == 1.0 for d in ds)  # 0.25 * FULL_THINK (256)
    assert p.decide(m, torch.ones(1, 5, dtype=torch.long), None, [Budget(1.0)])[0].think_tokens is None


def test_tuned_static_trains_per_budget_and_keeps_the_exact_count(tmp_path):
    from conftest import write_math

    from l2a.train import TrainConfig, train

    m = GatedModel(tiny_model("llama", n_layers=6), tokenizer=char_tokenizer())
    data = write_math(tmp_path / "math.jsonl", 40)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "tuned" / "b0.50"), steps=4, examples=2, max_len=48,
                      width=32, calib_prompts=0, dtype="float32", fixed_budget=0.5)
    train(cfg, model=m, progress=False)
    p = make_method("tuned-static", tuned_gates=tmp_path / "tuned")
    ids = torch.randint(4, 100, (3, 7))
    ds = p.decide(m, ids, None, [Budget(layers=0.5)] * 3)
    assert len(set(ds)) == 1 and sum(ds[0].layers) == kept_count(6, 0.5)  # input-agnostic, exact cost
    assert ds[0].layers[0] and ds[0].layers[-1]  # protected layers
    half = p.decide(m, ids[:1], None, [Budget(layers=0.5, heads=0.5)])[0]
    assert all(sum(g) == kept_count(m.n_groups, 0.5) for g in half.kv_groups)
    assert p.decide(m, ids[:1], None, [Budget(1.0)])[0].layer_fraction == 1.0
    with pytest.raises(ValueError, match=r"no gates for budget 0.70 .*found: b0.50"):
        p.decide(m, ids[:1], None, [Budget(layers=0.7)])


def test_l2a_delegates_to_model_decide():
    policy = make_method("l2a")
    model = type("M", (), {"policy": None})()
    with pytest.raises(ValueError, match="no gates loaded: pass --gates DIR"):
        policy.decide(model, torch.zeros(1, 3), None, [Budget(0.5)])
    seen = {}

    def decide(ids, budgets, attention_mask=None, mode="threshold"):
        seen.update(budgets=budgets, mode=mode)
        return [GateDecision.dense(2)] * len(budgets)

    model.policy, model.decide = object(), decide
    assert policy.decide(model, torch.zeros(2, 3), None, [Budget(0.5)] * 2) == [GateDecision.dense(2)] * 2
    assert seen == {"budgets": [Budget(0.5)] * 2, "mode": "threshold"}


def test_greedy_search_chunks_change_nothing_but_padding(gm, monkeypatch):
    """Chunked by length, the greedy search finds the order it finds on one padded batch (its KL is a mean over
    answer positions either way). Chunks hold every pair once, each within the token cap."""
    g = torch.Generator().manual_seed(0)
    lens = zip(torch.randint(2, 20, (9,), generator=g).tolist(), torch.randint(1, 5, (9,), generator=g).tolist())
    pairs = [(torch.randint(4, 100, (n,), generator=g).tolist(), torch.randint(4, 100, (k,), generator=g).tolist())
             for n, k in lens]
    parts = swap.search_chunks(pairs, tokens=40)
    assert len(parts) > 2 and sorted(sum(parts, [])) == sorted(pairs)
    assert all(len(c) * max(len(p) + len(a) for p, a in c) <= 40 for c in parts)
    assert swap.search_chunks(pairs, tokens=10**6) == [pairs]  # fits: one chunk, order kept
    whole = swap.greedy_kl_order(gm, pairs, list(range(1, L - 1)), n_remove=L - 2, progress=False)
    monkeypatch.setattr(swap, "SEARCH_TOKENS", 40)
    assert swap.greedy_kl_order(gm, pairs, list(range(1, L - 1)), n_remove=L - 2, progress=False) == whole


def _pairs(seed: int, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(4, 100, (8,), generator=g).tolist(), torch.randint(4, 100, (4,), generator=g).tolist())
            for _ in range(n)]


def test_set_kl_reuse_and_swap_refinement_against_brute_force():
    """SetKL resuming from a set's layer outputs gives the KL of a full forward; swap_refine ends at a set no
    single exchange improves (checked by full forwards over every exchange) and never above its start."""
    from l2a.swap import SetKL, swap_refine

    m = GatedModel(tiny_model("llama", n_layers=8, seed=3), tokenizer=char_tokenizer())
    kl = SetKL(m, _pairs(0))
    cand = list(range(1, 7))
    assert kl(set()) == pytest.approx(0.0, abs=1e-6) and kl({2, 5}) > 0
    per = kl.outputs({2, 5})
    assert kl({2, 6}, per, 5) == pytest.approx(kl({2, 6}), abs=1e-6)  # layers 0..4 skip the same: resumed
    start = {1, 2, 3}
    found = swap_refine(kl, start, cand, max_sweeps=20, progress=False)
    assert len(found["removed"]) == 3 and set(found["removed"]) <= set(cand)
    assert found["kl"] == pytest.approx(kl(set(found["removed"])), abs=1e-6) and found["kl"] <= found["start_kl"]
    assert found["start_kl"] == pytest.approx(kl(start), abs=1e-6)
    cur = set(start)
    for out, into in found["swaps"]:  # each exchange lowers the KL
        before, cur = kl(cur), cur - {out} | {into}
        assert kl(cur) < before
    assert cur == set(found["removed"])
    best = min(kl(cur - {i} | {j}) for i in cur for j in cand if j not in cur)
    assert best >= found["kl"] - 1e-6  # a local optimum: no single exchange improves it
    assert swap_refine(kl, start, cand, max_sweeps=0, progress=False)["removed"] == sorted(start)


def test_block_start_is_the_best_greedy_head_plus_block_by_full_forwards():
    """block_start: over greedy's first k removals plus a contiguous block of the rest (resumed at the block),
    the set with the lowest KL, checked against full forwards over every (k, block)."""
    from l2a.swap import SetKL, block_start

    m = GatedModel(tiny_model("llama", n_layers=8, seed=3), tokenizer=char_tokenizer())
    kl = SetKL(m, _pairs(1))
    cand, order, r = list(range(1, 7)), [4, 1, 6, 2, 3, 5], 4
    brute = {}
    for k in range(r - 1):  # blocks of at least two layers
        for a in cand:
            block = set(range(a, a + r - k))
            if block <= set(cand) and not block & set(order[:k]):
                brute[k, a] = kl(set(order[:k]) | block)
    found = block_start(kl, order, r, cand, progress=False)
    (k, a), val = min(brute.items(), key=lambda kv: kv[1])
    assert found["kl"] == pytest.approx(val, abs=1e-6) and (found["k"], found["block"][0]) == (k, a)
    assert found["removed"] == sorted(set(order[:k]) | set(range(a, a + r - k))) and len(brute) > 5
    assert block_start(kl, [1, 3, 5, 2, 4, 6], 4, [1, 3, 5], progress=False) == {}  # no two candidates adjacent


@pytest.mark.parametrize("method", ["greedy-swap", "block-swap"])
def test_greedy_swap_refines_the_greedy_set_per_budget_and_reads_it_back(gm, calib_file, monkeypatch, _static_cache,
                                                                         method):
    """greedy-swap removes swap_refine's set started from the greedy order's first layers at each budget's
    count (block-swap: from the better of those and the best block start), on the greedy search's own pairs;
    searched once per (model, Calibration, count), then read back."""
    import l2a.swap

    cal = static.Calibration(path=str(calib_file), n=4, max_tokens=48)
    calls = []
    real = l2a.swap.swap_refine
    monkeypatch.setattr(l2a.swap, "swap_refine", lambda kl, start, cand, **k: calls.append((list(start), kl)) or real(kl, start, cand, **k))
    policy = make_method(method, calibration=cal)
    order = static.greedy_order_for(gm, cal)
    b = Budget(layers=0.5)
    policy.prepare(gm, b)
    r = L - kept_count(L, 0.5)
    (start, kl), = calls
    found = static.swapped_set_for(gm, cal, r, blocks=method == "block-swap")
    assert kl.positions == sum(len(a) for _, a in static._search(gm, cal)[0])
    assert found["greedy_kl"] == pytest.approx(kl(set(order[:r])), abs=1e-6)
    if method == "greedy-swap":
        assert start == order[:r] and "block_start" not in found
    else:
        block = found["block_start"]
        assert block and block == l2a.swap.block_start(kl, order, r, order, progress=False)
        assert start == (block["removed"] if block["kl"] < found["greedy_kl"] else order[:r])
    d = policy.decision(gm, b)
    assert d.layers == GateDecision.dropping(L, found["removed"]).layers and len(calls) == 1
    assert json.loads(next(_static_cache.glob(f"{method}-*.json")).read_text())["removed"] == found["removed"]
    static._ORDERS.clear()
    assert policy.decision(gm, b) == d and len(calls) == 1  # read back from disk
    policy.decision(gm, Budget(layers=0.85))
    assert len(calls) == 2 and (method == "block-swap" or calls[1][0] == order[: L - kept_count(L, 0.85)])