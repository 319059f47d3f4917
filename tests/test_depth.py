"""The depth head (depth.py): per-prompt layer shifts, their hand-checkable pieces, and the artifact."""

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer, write_math

from l2a.budget import Budget
from l2a.checkpoint import load_gates, policy_digest, save_gates
from l2a.depth import best_shifts, fit_artifact, fit_depth, shifted_kl, spend
from l2a.gated import GatedModel
from l2a.gates import GateConfig, GatePolicy

L, G, H = 6, 4, 64


def policy(seed=0) -> GatePolicy:
    torch.manual_seed(seed)
    p = GatePolicy(GateConfig(n_layers=L, n_groups=G, hidden=H, width=32))
    with torch.no_grad():
        for prm in p.parameters():
            prm.normal_(0, 0.7)
    return p.eval()


def test_best_shifts_by_hand():
    # two chains, shifts -1/0/+1: chain 0 loses a lot without its layer, chain 1 little
    S = torch.tensor([[9.0, 1.1], [2.0, 1.0], [1.0, 0.9]], dtype=torch.double)  # (K=3, N=2) KL sums
    C = torch.tensor([[3.0, 3.0], [4.0, 4.0], [5.0, 5.0]], dtype=torch.double)  # counts
    pick = best_shifts(S, C, base=1)  # same mean count as shift 0 for both: 4
    assert pick.tolist() == [2, 0]  # the sensitive chain gets a layer, the other gives one up
    # fractional shifts mix neighbours; the common offset keeps the mean count
    n_tok = torch.tensor([1.0, 1.0], dtype=torch.double)
    rows = torch.arange(2)
    assert shifted_kl(S, C, n_tok, torch.zeros(2, dtype=torch.double), rows, (-1, 0, 1), 4.0) == pytest.approx(1.5)
    assert shifted_kl(S, C, n_tok, torch.tensor([1.0, -1.0], dtype=torch.double), rows, (-1, 0, 1), 4.0) == pytest.approx(
        (1.0 + 1.1) / 2)
    assert shifted_kl(S, C, n_tok, torch.tensor([0.5, -0.5], dtype=torch.double), rows, (-1, 0, 1), 4.0) == pytest.approx(
        ((2.0 + 1.0) / 2 + (1.1 + 1.0) / 2) / 2)
    # shifts that raise the mean count are moved back down together: +1 for both is the same as 0
    assert shifted_kl(S, C, n_tok, torch.ones(2, dtype=torch.double), rows, (-1, 0, 1), 4.0) == pytest.approx(1.5)


def test_best_shifts_keep_both_counts_of_compute():
    # chain 0 is long (9 answer tokens) and gains 3 per layer; chain 1 is short (1 token) and gains little
    S = torch.tensor([[12.0, 2.0], [9.0, 1.0], [6.0, 0.5]], dtype=torch.double)  # (K=3, N=2) KL sums
    C = torch.tensor([[3.0, 3.0], [4.0, 4.0], [5.0, 5.0]], dtype=torch.double)
    T = torch.tensor([9.0, 1.0], dtype=torch.double)
    # a price per chain alone moves a layer to the long chain: the same mean count, more token-weighted compute
    assert best_shifts(S, C, 1).tolist() == [2, 0]
    assert spend(C[[2, 0], [0, 1]], T) == pytest.approx(4.8) and spend(C[1], T) == 4.0
    # counted both ways that trade is not free, and nothing cheaper beats the request
    pick = best_shifts(S, C, 1, T)
    assert pick.tolist() == [1, 1] and spend(C[pick, [0, 1]], T) <= 4.0
    # shifted_kl holds the larger of the two counts: +1/-1 is moved down until the token-weighted count is 4
    rows = torch.arange(2)
    got = shifted_kl(S, C, T, torch.tensor([1.0, -1.0], dtype=torch.double), rows, (-1, 0, 1), 4.0)
    # chain 1 stays clipped at shift -1 (3 layers); chain 0 at 1 + o: 9 (5 + o) + 3 = 40 → o = -8/9
    o = -8 / 9
    assert got == pytest.approx(((9.0 + (6.0 - 9.0) * (1 + o)) + 2.0) / 10)


@torch.no_grad()
def test_a_shift_of_k_layers_is_the_decision_at_k_more_layers_of_budget():
    p = policy()
    pooled, lengths = torch.randn(5, H), torch.tensor([20, 30, 40, 50, 60])
    b = 0.6
    plain = p.decisions(pooled, [Budget(layers=b + 1 / L)] * 5, lengths=lengths)
    p.set_depth(torch.zeros(H + 1), 1.0)
    assert p.decisions(pooled, [Budget(layers=b)] * 5, lengths=lengths) == plain
    # strict mode caps each request: the head does not move it; budget 1.0 stays dense
    q = policy()
    assert p.decisions(pooled, [Budget(layers=b)] * 5, mode="strict", lengths=lengths) == \
        q.decisions(pooled, [Budget(layers=b)] * 5, mode="strict", lengths=lengths)
    assert all(all(d.layers) for d in p.decisions(pooled, [Budget(1.0)] * 5, lengths=lengths))
    # per-prompt shifts stay nested across budgets for each prompt
    p.set_depth(torch.randn(H + 1), 0.0)
    prev = None
    for lay in (0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        ds = p.decisions(pooled, [Budget(layers=lay)] * 5, lengths=lengths)
        if prev:
            assert all(all(h or not x for x, h in zip(lo.layers, hi.layers)) for lo, hi in zip(prev, ds))
        prev = ds


def test_depth_head_round_trips_and_gates_without_one_are_unchanged(tmp_path):
    base = tiny_model("llama", n_layers=L)
    p = policy(1)
    digest = policy_digest(p)
    assert "depth_w" not in p.state_dict()
    save_gates(p, tmp_path / "plain", base)
    assert policy_digest(load_gates(tmp_path / "plain", base)) == digest  # no head: same artifact as before
    p.set_depth(torch.randn(H + 1), 0.3)
    save_gates(p, tmp_path / "depth", base)
    q = load_gates(tmp_path / "depth", base)
    assert torch.equal(q.depth_w, p.depth_w) and torch.equal(q.depth_b, p.depth_b)
    pooled = torch.randn(4, H)
    assert q.decisions(pooled, [Budget(layers=0.6)] * 4) == p.decisions(pooled, [Budget(layers=0.6)] * 4)
    assert q.depth_shift(pooled).abs().max() <= 3.0


def test_fit_depth_runs_on_a_tiny_model_and_refuses_the_ablation(tmp_path):
    from l2a.examples import math_examples
    from l2a.train import TrainConfig

    m = GatedModel(tiny_model("llama", n_layers=L), tokenizer=tiny_tokenizer())
    cfg = TrainConfig(data=str(write_math(tmp_path / "m.jsonl", 40)), max_len=48, calib_prompts=0, examples=1)
    pairs = math_examples(cfg, m.tokenizer)[0][:24]
    p = policy(2)
    rec = fit_depth(m, p, pairs, 0, budget=0.6, shifts=(-1, 0, 1), folds=3, progress=False)
    assert rec["pairs"] == 24 and rec["per_chain_oracle"] <= rec["kl_at_request"] + 1e-9
    if rec["alpha"] > 0:  # a head was installed only because it lowered held-out KL
        assert rec["cv_kl"] < rec["kl_at_request"] and hasattr(p, "depth_w")
    else:
        assert not hasattr(p, "depth_w")
    abl = GatePolicy(GateConfig(n_layers=L, n_groups=G, hidden=H, width=32, budget_only=True))
    with pytest.raises(ValueError, match="budget-only"):
        fit_depth(m, abl, pairs, 0, progress=False)


def test_fit_artifact_uses_unseen_whole_chains_and_writes_the_head(tmp_path):
    from l2a.examples import math_examples
    from l2a.train import TrainConfig, train

    m = GatedModel(tiny_model("llama", n_layers=L), tokenizer=tiny_tokenizer())
    for prm in m.hf.parameters():
        prm.requires_grad_(False)
    cfg = TrainConfig(data=str(write_math(tmp_path / "m.jsonl", 120)), out=str(tmp_path / "gates"), steps=2, examples=2,
                      max_len=40, width=32, calib_prompts=4, dtype="float32")
    train(cfg, model=m, progress=False)
    cut, _ = math_examples(cfg, m.tokenizer)
    whole, _ = math_examples(cfg, m.tokenizer, cut=200)  # the same examples, answers no longer cut at max_len
    assert [p for p, _ in whole] == [p for p, _ in cut]
    assert all(w[: len(c)] == c for (_, w), (_, c) in zip(whole, cut)) and sum(map(len, (a for _, a in whole))) > \
        sum(map(len, (a for _, a in cut)))
    rec = fit_artifact(m, cfg.out, tmp_path / "depth", pairs=8, max_len=200, progress=False)
    assert rec["pairs"] == 8 and rec["max_len"] == 200
    q = load_gates(tmp_path / "depth", m.hf)
    assert hasattr(q, "depth_w") == (rec["alpha"] > 0)
    with pytest.raises(ValueError, match="unseen chains remain"):
        fit_artifact(m, cfg.out, tmp_path / "depth2", pairs=70, progress=False)
    with pytest.raises(ValueError, match="shorter than training"):
        fit_artifact(m, cfg.out, tmp_path / "depth3", pairs=8, max_len=20, progress=False)
    TrainConfig(max_len=512)  # without a depth head its length is no constraint
