"""Warm starts (warmstart.py): the input-aware one starts each source's prompts from its own searched order."""

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
    import l2a.static
    from l2a.mix import ordered
    from l2a.train import WARM_PAIRS

    rows = [{"question": f"Which colour is item {i}?", "choices": ["red", "green", "blue"], "answer": i % 3} for i in range(80)]
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []
    real = l2a.static.greedy_kl_order
    monkeypatch.setattr(l2a.static, "greedy_kl_order", lambda m, prs, *a, **k: seen.append(prs) or real(m, prs, *a, **k))
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
