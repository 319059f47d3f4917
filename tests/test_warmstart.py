"""Warm starts (warmstart.py): the input-aware one starts each source's prompts from its own searched order."""

import copy
import json

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer, write_math

from l2a.gated import GatedModel
from l2a.gates import GateConfig, GatePolicy
from l2a.train import TrainConfig, train
from l2a.warmstart import fit_sources

L = 6


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort(-1).argsort(-1)  # (..., n) rank of each entry, 0 = lowest


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_sources_starts_each_source_at_its_own_order(seed):
    torch.manual_seed(seed)
    policy = GatePolicy(GateConfig(n_layers=L, n_groups=2, hidden=64, width=32))
    n_gate = len(policy.config.gateable)
    centre = torch.randn(2, 64) * 2  # two sources, apart in the router's input
    pooled = lambda n: torch.cat([centre[0] + torch.randn(n, 64), centre[1] + torch.randn(n, 64)])  # noqa: E731
    source = torch.arange(2).repeat_interleave(64)  # (128,)
    policy.fit_input(pooled(64))
    orders = torch.stack([torch.randperm(n_gate), torch.randperm(n_gate).flip(0)]).float()  # (2, n_gate)
    shift = 3 * (orders - orders.mean(1, keepdim=True)) / orders.std(1, keepdim=True)
    before = policy.out.weight.clone()
    fit = fit_sources(policy, pooled(64), source, shift)
    assert set(fit["agree"]) == {0, 1} and min(fit["agree"].values()) >= 0.95
    assert torch.equal(policy.out.weight[n_gate:], before[n_gate:])  # group gates untouched
    fresh = pooled(32)  # prompts the fit never saw, at budgets other than the fit's
    src = torch.arange(2).repeat_interleave(32)
    for b in (0.45, 0.7, 0.95):
        with torch.no_grad():
            logits = policy(fresh, torch.tensor([[b, 1.0, 1.0]]).expand(64, 3)).layers  # (64, n_gate)
        assert (_ranks(logits) == _ranks(shift[src])).float().mean() > 0.9


def test_warm_domains_searches_each_source_apart_and_reads_the_search_back(tmp_path, monkeypatch):
    import l2a.swap
    from l2a.mix import ordered
    from l2a.train import WARM_PAIRS

    rows = [{"question": f"Which colour is item {i}?", "choices": ["red", "green", "blue"], "answer": i % 3} for i in range(80)]
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []
    real = l2a.swap.greedy_kl_order
    monkeypatch.setattr(l2a.swap, "greedy_kl_order", lambda m, prs, *a, **k: seen.append(prs) or real(m, prs, *a, **k))
    m = GatedModel(tiny_model("llama", n_layers=L), tokenizer=tiny_tokenizer())
    cfg = TrainConfig(data=str(write_math(tmp_path / "math.jsonl", 60)), out=str(tmp_path / "gates"), steps=2, examples=4,
                      max_len=48, width=32, calib_prompts=4, save_every=1, dtype="float32", warm_start="greedy-kl",
                      warm_text=3, warm_domains=True, train_text=0.5, mix_mc=[str(mc)])
    summary = train(cfg, model=m, progress=False)
    assert len(seen) == 2 and len(seen[0]) == WARM_PAIRS and seen[1] == ordered(m.tokenizer, cfg.seed, cfg.mix_mc)[:3]
    assert all(p not in seen[1] for p in seen[0])  # the task's order never sees the second source's pairs
    saved = json.loads((tmp_path / "gates" / "warm_start.json").read_text())
    assert saved["order"] == summary["warm_start_order"] and saved["second_order"] == summary["warm_start_second_order"]
    assert set(summary["warm_start_fit"]["agree"]) == {0, 1}
    train(TrainConfig(**{**cfg.__dict__, "steps": 3}), model=m, progress=False)  # resumes: no second search
    assert len(seen) == 2
    with pytest.raises(ValueError, match="warm_domains .* needs warm_text"):
        TrainConfig(warm_start="greedy-kl", warm_text=3, warm_domains=True)


def test_rank_anchor_resists_reordering_only():
    from l2a.losses import rank_anchor

    ref = torch.randn(5, 8)
    assert rank_anchor(3 * ref - 2, ref).item() < 1e-10  # shifts and sharpening are free
    swapped = ref.clone()
    swapped[:, [0, 1]] = ref[:, [1, 0]]
    moved = swapped.clone().requires_grad_(True)
    rank_anchor(moved, ref).backward()
    assert rank_anchor(swapped, ref).item() > 1e-3
    assert rank_anchor(swapped - 0.1 * moved.grad, ref) < rank_anchor(swapped, ref)  # the gradient restores the order


def _anchor_run(tmp_path, name, anchor, steps):
    m = GatedModel(tiny_model("llama", n_layers=L), tokenizer=tiny_tokenizer())
    cfg = TrainConfig(data=str(write_math(tmp_path / "math.jsonl", 60)), out=str(tmp_path / name), steps=steps, examples=4,
                      max_len=48, width=32, calib_prompts=4, save_every=2, dtype="float32", lr=0.05,
                      warm_start="block-influence", warm_scale=3.0, anchor=anchor)
    train(cfg, model=m, progress=False)
    return m, cfg


def test_anchor_holds_the_warm_started_ranking_and_resumes(tmp_path, monkeypatch):
    import l2a.train
    from l2a.checkpoint import load_gates
    from l2a.losses import rank_anchor
    from l2a.examples import pooled_prompts

    refs = []  # the policy as warm-started: the reference the anchor holds
    real = l2a.train.warm_start
    monkeypatch.setattr(l2a.train, "warm_start", lambda m_, policy, *a: real(m_, policy, *a) or refs.append(copy.deepcopy(policy)) or {})
    drift = {}
    for anchor in (0.0, 20.0):
        m, cfg = _anchor_run(tmp_path, f"a{anchor}", anchor, 12)
        trained = load_gates(cfg.out, m.hf)
        ref = refs[-1]
        prompts = [[5 + i, 9, 11 + i % 7, 3] for i in range(16)]
        pooled = pooled_prompts(m, ref, prompts, 0)
        with torch.no_grad():
            b = torch.tensor([[0.6, 1.0, 1.0]]).expand(16, 3)
            drift[anchor] = rank_anchor(trained(pooled, b).layers, ref(pooled, b).layers).item()
    assert drift[20.0] < 0.5 * drift[0.0], drift
    # a resumed run holds the same reference (the warm start, not the state it resumes from): after 6 + 1
    # steps its anchor term is that of an uninterrupted run (CPU float sums differ run to run: not bit for bit)
    m, cfg = _anchor_run(tmp_path, "resumed", 20.0, 6)
    train(TrainConfig(**{**cfg.__dict__, "steps": 12}), model=m, progress=False)
    at7 = [next(json.loads(x)["anchor"] for x in open(tmp_path / d / "log.jsonl") if json.loads(x)["step"] == 7)
           for d in ("a20.0", "resumed")]
    assert at7[0] > 1e-3 and abs(at7[1] - at7[0]) < 0.2 * at7[0], at7
    with pytest.raises(ValueError, match="anchor .* needs --warm-start"):
        TrainConfig(anchor=1.0)


def test_warm_pairs_sets_how_many_held_out_examples_the_search_sees(tmp_path, monkeypatch):
    """warm_pairs: the greedy warm start searches the last warm_pairs examples of the seeded order, and
    training never draws them; a count below one is refused."""
    import l2a.examples
    import l2a.swap
    import l2a.train as T

    seen, drawn = [], []
    real = l2a.swap.greedy_kl_order
    monkeypatch.setattr(l2a.swap, "greedy_kl_order", lambda m, prs, *a, **k: seen.append(prs) or real(m, prs, *a, **k))
    m = GatedModel(tiny_model("llama", n_layers=L), tokenizer=tiny_tokenizer())
    math = tmp_path / "math.jsonl"  # distinct items, so an example drawn is told from one searched by its ids
    math.write_text("".join(json.dumps({"question": f"What is {i}+{i + 1}?", "answer": f"#### {2 * i + 1}"}) + "\n"
                            for i in range(20)))
    cfg = TrainConfig(data=str(math), out=str(tmp_path / "gates"), steps=5, examples=4, max_len=48, width=32,
                      calib_prompts=4, save_every=1, dtype="float32", warm_start="greedy-kl", warm_pairs=9)
    examples, _ = T.math_examples(cfg, m.tokenizer)
    order = T.example_order(cfg, len(examples))
    real_batch = T.example_batch
    spy = lambda exs, *a, **k: drawn.extend(exs) or real_batch(exs, *a, **k)  # noqa: E731
    monkeypatch.setattr(T, "example_batch", spy)  # training's batches
    monkeypatch.setattr(l2a.examples, "example_batch", spy)  # the search's (swap.py imports it when it runs)
    summary = train(cfg, model=m, progress=False)
    assert len(seen) == 1 and seen[0] == [examples[i] for i in order[-9:]]
    search, steps = drawn[:9], drawn[9:]  # the search batches its pairs once; training's 20 draws wrap its 7
    assert sorted(search) == sorted(seen[0]) and len(steps) == 20 and not any(ex in seen[0] for ex in steps)
    assert json.loads((tmp_path / "gates" / "warm_start.json").read_text())["pairs"] == 9
    assert summary["warm_start_order"] == json.loads((tmp_path / "gates" / "warm_start.json").read_text())["order"]
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match="warm_pairs must be a positive int"):
            TrainConfig(warm_start="greedy-kl", warm_pairs=bad)


def test_nested_order_puts_a_set_first_and_keeps_each_part_in_order():
    from l2a.swap import nested_order

    assert nested_order([5, 2, 7, 1, 3], {7, 3}) == [7, 3, 5, 2, 1]
    assert nested_order([5, 2, 7, 1, 3], [2, 5]) == [5, 2, 7, 1, 3]  # a prefix already: unchanged
    with pytest.raises(ValueError, match=r"layers \[9\] are not in the order"):
        nested_order([5, 2, 7], {9, 2})


def test_warm_refine_starts_the_gates_from_the_swapped_set_nested_and_reads_it_back(tmp_path, monkeypatch):
    """warm_refine b: the greedy order's set at b's count is swap-refined on the same pairs and the order is
    rebuilt around it, so the warm-started gates rank that set lowest; a resumed run reads the search back."""
    import l2a.swap
    import l2a.train
    from l2a.swap import nested_order
    from l2a.examples import pooled_prompts

    calls, policies = [], []
    real_refine, real_greedy = l2a.swap.swap_refine, l2a.swap.greedy_kl_order
    monkeypatch.setattr(l2a.swap, "swap_refine", lambda kl, start, cand, **k: calls.append((list(start), kl)) or
                        real_refine(kl, start, cand, **k))
    real_warm = l2a.train.warm_start
    monkeypatch.setattr(l2a.train, "warm_start", lambda m_, policy, *a: real_warm(m_, policy, *a) |
                        {"_": policies.append(copy.deepcopy(policy))})
    m = GatedModel(tiny_model("llama", n_layers=L, seed=2), tokenizer=tiny_tokenizer())
    cfg = TrainConfig(data=str(write_math(tmp_path / "math.jsonl", 60)), out=str(tmp_path / "gates"), steps=2,
                      examples=4, max_len=48, width=32, calib_prompts=4, save_every=1, dtype="float32",
                      warm_start="greedy-kl", warm_scale=3.0, warm_refine=0.5)
    summary = train(cfg, model=m, progress=False)
    saved = json.loads((tmp_path / "gates" / "warm_start.json").read_text())
    (start, kl), = calls
    found, = saved["refined"]
    r = 3  # 6 layers at 0.5 keep 3: the three gateable ones removed
    block = found["block_start"]  # the swaps start from the better of greedy's set and the best block start
    assert found["greedy_kl"] == pytest.approx(kl(set(saved["greedy_order"][:r])), abs=1e-6) and block["kl"] > 0
    assert start == (block["removed"] if block["kl"] < found["greedy_kl"] else saved["greedy_order"][:r])
    assert found["budget"] == 0.5 and len(found["removed"]) == r and found["start_kl"] == min(block["kl"], found["greedy_kl"])
    assert found["kl"] <= found["start_kl"] and found["kl"] == pytest.approx(kl(set(found["removed"])), abs=1e-6)
    assert saved["order"] == nested_order(saved["greedy_order"], found["removed"]) == summary["warm_start_order"]
    assert summary["warm_start_refined"] == saved["refined"]
    train(TrainConfig(**{**cfg.__dict__, "steps": 3}), model=m, progress=False)  # resumes: no second search
    assert len(calls) == 1
    state = tmp_path / "gates" / "train_state.json"  # a run saved before warm_refine took a list still resumes
    meta = json.loads(state.read_text())
    state.write_text(json.dumps({**meta, "config": {**meta["config"], "warm_refine": 0.5, "removed_field": 1}}))
    assert train(TrainConfig(**{**cfg.__dict__, "steps": 4}), model=m, progress=False)["warm_start_order"] == saved["order"]
    # interrupted after the greedy search: the refinement runs again from the kept greedy order, no greedy search
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "warm_start.json").write_text(json.dumps({"greedy_orders": [saved["greedy_order"]]}))
    monkeypatch.setattr(l2a.swap, "greedy_kl_order", lambda *a, **k: pytest.fail("searched again"))
    cut = train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "cut"), "steps": 1}), model=m, progress=False)
    assert len(calls) == 2 and cut["warm_start_order"] == saved["order"]
    monkeypatch.setattr(l2a.swap, "greedy_kl_order", real_greedy)

    # whatever set the swaps return is the one the warm-started gates rank lowest (here: greedy's last layers)
    monkeypatch.setattr(l2a.swap, "swap_refine", lambda kl, start, cand, **k: {
        "removed": sorted(saved["greedy_order"][-r:]), "kl": 0.0, "start_kl": 0.0, "swaps": []})
    out = train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "forced"), "steps": 1}), model=m, progress=False)
    assert out["warm_start_order"][:r] == [j for j in saved["greedy_order"] if j in saved["greedy_order"][-r:]]
    policy = policies[-1]
    pooled = pooled_prompts(m, policy, [[5 + i, 9, 11 + i % 7, 3] for i in range(8)], 0)
    with torch.no_grad():
        logits = policy(pooled, torch.tensor([[0.5, 1.0, 1.0]]).expand(8, 3)).layers  # (8, n_gateable)
    gate = list(policy.config.gateable)
    lowest = {frozenset(gate[i] for i in row.topk(r, largest=False).indices.tolist()) for row in logits}
    assert lowest == {frozenset(saved["greedy_order"][-r:])}
    for bad in (0.2, 1.0, True, [0.5, 1.0], ["0.5"]):
        with pytest.raises(ValueError, match="warm_refine refines the greedy-kl warm start's sets"):
            TrainConfig(warm_start="greedy-kl", warm_refine=bad)
    with pytest.raises(ValueError, match="it needs warm_start greedy-kl"):
        TrainConfig(warm_start="block-influence", warm_refine=0.6)


def test_warm_refine_at_two_budgets_searches_the_second_set_inside_the_first(tmp_path, monkeypatch):
    """Several warm_refine budgets, deepest first: each set is searched only among the layers of the one before,
    so the rebuilt order nests both (its first 2 layers are the shallow set, its first 3 the deep one); each
    search is kept as it ends, so a run cut between them resumes at the second."""
    import l2a.swap
    from l2a.swap import nested_order

    calls = []
    real_refine = l2a.swap.swap_refine
    monkeypatch.setattr(l2a.swap, "swap_refine", lambda kl, start, cand, **k: calls.append((list(start), list(cand)))
                        or real_refine(kl, start, cand, **k))
    m = GatedModel(tiny_model("llama", n_layers=L, seed=3), tokenizer=tiny_tokenizer())
    cfg = TrainConfig(data=str(write_math(tmp_path / "math.jsonl", 60)), out=str(tmp_path / "gates"), steps=1,
                      examples=4, max_len=48, width=32, calib_prompts=4, save_every=1, dtype="float32",
                      warm_start="greedy-kl", warm_scale=3.0, warm_refine=[0.67, 0.5])
    assert cfg.warm_refine == [0.5, 0.67]  # deepest first, whatever order they were given in
    summary = train(cfg, model=m, progress=False)
    saved = json.loads((tmp_path / "gates" / "warm_start.json").read_text())
    deep, shallow = saved["refined"]
    assert (deep["budget"], shallow["budget"]) == (0.5, 0.67) and len(deep["removed"]) == 3
    assert len(shallow["removed"]) == 2 and set(shallow["removed"]) < set(deep["removed"])
    (_, cand_deep), (start, cand_shallow) = calls
    assert sorted(cand_deep) == sorted(saved["greedy_order"]) and sorted(cand_shallow) == deep["removed"]
    middle = nested_order(saved["greedy_order"], deep["removed"])  # the second search starts from this order
    assert start in (middle[:2], shallow["block_start"].get("removed"))
    assert saved["order"] == nested_order(middle, shallow["removed"]) == summary["warm_start_order"]
    assert set(saved["order"][:2]) == set(shallow["removed"]) and set(saved["order"][:3]) == set(deep["removed"])
    # cut after the deep search: only the shallow one runs again, from the kept deep set
    (tmp_path / "cut").mkdir()
    kept = {k: v for k, v in deep.items() if k != "budget"}
    (tmp_path / "cut" / "warm_start.json").write_text(json.dumps({"greedy_orders": [saved["greedy_order"]],
                                                                  "refined_0_0.5": kept}))
    cut = train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "cut")}), model=m, progress=False)
    assert len(calls) == 3 and sorted(calls[-1][1]) == deep["removed"]
    assert cut["warm_start_order"] == saved["order"]
    # a config saved with one number (before several were allowed) reads back as a list of one
    assert TrainConfig(**{**cfg.__dict__, "warm_refine": 0.55}).warm_refine == [0.55]
