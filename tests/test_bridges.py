"""Bridges: the fit solves the ridge normal equations on the dense model's own hidden states; a decision run with
bridges equals the HF model with those layers physically replaced by their maps (with and without a cache);
budget 1.0 stays bit-identical; a mixed batch equals each row alone; the soft (training) plan agrees with the
hard one; the artifact refuses another base model; the cost model counts them; eval names and checks them."""

import copy
import json

import pytest
import torch
from chartok import char_tokenizer
from conftest import bridged_oracle, tiny_model

from l2a.bridges import BridgeConfig, Bridges, fit_bridges, load_bridges, save_bridges
from l2a.cost import CostModel
from l2a.data import generate_gsm8k
from l2a.decision import GateDecision
from l2a.gated import GatedModel, prefill_positions
from l2a.scoring import left_pad
from l2a.static import Calibration, calibration_sequences

L = 4


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate_gsm8k(8)))
    return Calibration(path=str(path), n=8, max_tokens=48, batch_size=3)


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def fitted(request, calib):
    gm = GatedModel(tiny_model(request.param, n_layers=L), tokenizer=char_tokenizer())
    return gm, fit_bridges(gm, BridgeConfig(calib, ridge=1e-2), progress=False)


def _skip(*layers):
    return GateDecision(layers=tuple(i not in layers for i in range(L)))


def test_fit_solves_the_ridge_normal_equations_on_dense_hidden_states(fitted, calib):
    gm, bridges = fitted
    seqs, pad, _ = calibration_sequences(gm, calib)
    xs, ys = [[] for _ in range(L)], [[] for _ in range(L)]
    hf = copy.deepcopy(gm).detach()  # the plain transformers model
    with torch.no_grad():
        for start in range(0, len(seqs), 3):
            ids, mask = left_pad(seqs[start:start + 3], pad, "cpu")
            hs = hf(input_ids=ids, attention_mask=mask, position_ids=prefill_positions(mask),
                    output_hidden_states=True).hidden_states  # (L+1,) of (B, T, H); the last is normed
            keep = mask.bool() & (mask.cumsum(1) > 1)  # real tokens but each row's first
            for i in range(L - 1):
                xs[i].append(hs[i][keep])
                ys[i].append(hs[i + 1][keep] - hs[i][keep])
    H = hf.config.hidden_size
    for i in range(L - 1):
        x = torch.cat(xs[i]).double()
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # (N, H+1)
        y = torch.cat(ys[i]).double()  # (N, H)
        w = torch.cat([bridges.w[i], bridges.b[i][None]]).double()  # (H+1, H)
        a = x.T @ x
        lhs = (a + 1e-2 * a.diagonal().mean() * torch.eye(H + 1, dtype=a.dtype)) @ w
        torch.testing.assert_close(lhs, x.T @ y, rtol=1e-4, atol=1e-4 * float((x.T @ y).abs().max()))
    assert bridges.fit["tokens"] == sum(len(x) for x in xs[0])
    assert all(0 < r2 <= 1 for r2 in bridges.fit["r2"])


def test_a_decision_with_bridges_equals_the_model_with_those_layers_replaced(fitted):
    gm, bridges = fitted
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    oracle = bridged_oracle(gm, bridges, (1, 2))
    with gm.bridged(bridges), torch.no_grad():
        got = gm.forward(ids, decisions=_skip(1, 2))
        gen = gm.generate(ids, decisions=_skip(1, 2), max_new_tokens=6)
    with torch.no_grad():
        want = oracle(input_ids=ids).logits
        want_gen = oracle.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(gen, want_gen)
    with torch.no_grad():  # and bridges change the result: skipping alone is another model
        assert not torch.allclose(gm.forward(ids, decisions=_skip(1, 2)), want, atol=1e-3)


def test_budget_one_with_bridges_is_bit_identical_to_the_plain_model(fitted):
    gm, bridges = fitted
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = copy.deepcopy(gm).detach()(input_ids=ids).logits
        with gm.bridged(bridges):
            got = gm.forward(ids, decisions=gm.dense_decision())
    assert torch.equal(got, plain)


def test_a_mixed_batch_with_bridges_equals_each_row_alone(fitted):
    gm, bridges = fitted
    ids = torch.randint(3, 128, (3, 8), generator=torch.Generator().manual_seed(2))
    ds = [_skip(1), gm.dense_decision(), _skip(1, 2)]
    with gm.bridged(bridges), torch.no_grad():
        mixed = gm.forward(ids, decisions=ds)
        alone = torch.cat([gm.forward(ids[i:i + 1], decisions=ds[i]) for i in range(3)])
    torch.testing.assert_close(mixed, alone, rtol=1e-5, atol=1e-5)


def test_the_soft_plan_with_bridges_agrees_with_the_hard_one(fitted):
    gm, bridges = fitted
    ids = torch.randint(3, 128, (2, 8), generator=torch.Generator().manual_seed(3))
    gates = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]])  # (B, L)
    with gm.bridged(bridges), torch.no_grad():
        hard = gm.forward(ids, decisions=[_skip(1), _skip(2)])
        with gm.soft(gates):
            soft = gm.hf(input_ids=ids).logits
    torch.testing.assert_close(soft, hard, rtol=1e-5, atol=1e-5)


def test_low_rank_bridges_round_trip_and_refuse_another_base_model(calib, tmp_path):
    gm = GatedModel(tiny_model("llama", n_layers=L), tokenizer=char_tokenizer())
    bridges = fit_bridges(gm, BridgeConfig(calib, rank=4), progress=False)
    assert bridges.w is None and bridges.u.shape == (L, 64, 4) and bridges.rank == 4
    full = fit_bridges(gm, BridgeConfig(calib), progress=False)
    assert all(r <= f + 1e-6 for r, f in zip(bridges.fit["r2"], full.fit["r2"]))  # truncation never fits better
    save_bridges(bridges, tmp_path / "b")
    back = load_bridges(tmp_path / "b", gm.hf)
    assert back.digest() == bridges.digest() and back.fit == bridges.fit
    assert back.config == bridges.config
    other = tiny_model("llama", n_layers=L, seed=5)
    with pytest.raises(ValueError, match="made for base model"):
        load_bridges(tmp_path / "b", other)
    with pytest.raises(FileNotFoundError, match="fit-bridges"):
        load_bridges(tmp_path / "none", gm.hf)
    with pytest.raises(ValueError, match="do not fit this model"):
        GatedModel(tiny_model("llama", n_layers=L + 1), tokenizer=char_tokenizer()).bridges = bridges
    with pytest.raises(ValueError, match="ridge"):
        BridgeConfig(calib, ridge=0)
    with pytest.raises(ValueError, match="rank"):
        BridgeConfig(calib, rank=0)


def test_the_cost_model_counts_a_bridge_per_skipped_layer():
    base = CostModel(n_layers=4, hidden=64, ffn=128, n_heads=8, n_kv_heads=4, head_dim=8, vocab=128)
    full, low = CostModel(**{**base.__dict__, "bridge_rank": 64}), CostModel(**{**base.__dict__, "bridge_rank": 4})
    d = _skip(1, 2)
    assert full.decode_flops(d) - base.decode_flops(d) == 2 * 2 * (64 * 64 + 64)
    assert low.decode_flops(d) - base.decode_flops(d) == 2 * 2 * (2 * 64 * 4 + 64)
    assert full.decode_flops(None) == base.decode_flops(None)  # dense runs no bridge
    assert full.params(d) - base.params(d) == 2 * (64 * 64 + 64)
    with pytest.raises(ValueError, match="bridge_rank"):
        CostModel(**{**base.__dict__, "bridge_rank": -1})


def test_eval_names_bridged_lines_and_refuses_other_bridges(fitted, calib, tmp_path):
    from l2a.evaluate import evaluate

    gm, bridges = fitted
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"question": f"q{i} 1+{i}?", "choices": [str(i + 1), str(i + 2)], "answer": 0}) + "\n"
                          for i in range(4)))
    out = tmp_path / "res.jsonl"
    run = dict(budgets=[0.5], methods=["dense", "drop-last"], seeds=1, out=out, calibration=calib, warmup=False,
               progress=False, axes=("layers",))
    with gm.bridged(bridges):
        lines = evaluate(gm, "mc", [mc], **run)
    assert [r["method"] for r in lines] == ["dense", "drop-last+bridges"]
    assert "bridges" not in lines[0] and lines[1]["bridges"]["digest"] == bridges.digest()
    plain = evaluate(gm, "mc", [mc], **run)  # no bridges: its own name, the dense line reused
    assert [r["method"] for r in plain] == ["dense", "drop-last"]
    assert plain[1]["flops_per_token"] < lines[1]["flops_per_token"]  # the bridges are counted
    other = Bridges(bridges.w * 0, bridges.b * 0, config=bridges.config)
    with gm.bridged(other), pytest.raises(ValueError, match="other bridges"):
        evaluate(gm, "mc", [mc], **run)
    from l2a.retime import retime_results

    with pytest.raises(ValueError, match="ran with bridges"):
        retime_results(gm, "mc", str(mc), [(out, None)], repeats=1, items=2, progress=False)


def test_a_search_under_bridges_is_keyed_apart_and_plain_keys_are_unchanged(fitted, calib):
    from l2a import static

    gm, bridges = fitted
    plain = static._search(gm, calib)[2]
    with gm.bridged(bridges):
        bridged = static._search(gm, calib)[2]
        assert static._bridges_id(gm) == bridges.digest()
    assert bridged != plain and static._search(gm, calib)[2] == plain and static._bridges_id(gm) is None


def test_bridge_gain_pairs_each_bridged_line_with_its_plain_twin(tmp_path):
    import runpy
    from pathlib import Path

    rows = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "bridge_gain.py"))["rows"]

    def line(method, nll, items):
        return {"method": method, "task": "gsm8k-loglik", "data": "d/test.jsonl", "budget": 0.7, "nll": nll,
                "item_nll": items, "item_tokens": [1.0] * len(items), "n": len(items), "flops_fraction": 0.8, "realized_layers": 0.7}

    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        line("angular", 3.0, [3.0, 3.2, 2.8, 3.0]), line("angular+bridges", 2.5, [2.4, 2.7, 2.3, 2.6]),
        line("l2a+bridges", 2.0, [2.0] * 4)]))  # no plain twin: no row
    (r,) = rows([path])
    assert (r["method"], r["plain"], r["bridged"]) == ("angular", 3.0, 2.5)
    assert r["gain"] == pytest.approx(0.5) and 0 < r["ci"][0] <= 0.5 <= r["ci"][1]  # lower NLL: a gain
    other = tmp_path / "o.jsonl"  # --against: paired with the same method's line under other bridges
    other.write_text(json.dumps(line("l2a+bridges", 2.5, [2.4, 2.7, 2.3, 2.6])) + "\n")
    (r,) = rows([path], [other])  # angular has no line under the other bridges: no row
    assert (r["method"], r["plain"], r["bridged"]) == ("l2a", 2.5, 2.0) and r["gain"] == pytest.approx(0.5)


@pytest.mark.parametrize("estimator", ["st", "score"])
def test_gates_trained_with_bridges_run_them_and_eval_requires_them(fitted, calib, tmp_path, monkeypatch, estimator):
    from conftest import write_math

    from l2a.checkpoint import load_gates
    from l2a.evaluate import evaluate
    from l2a.train import TrainConfig, train

    gm, bridges = fitted
    save_bridges(bridges, tmp_path / "br")
    calls = []
    forward = Bridges.forward
    monkeypatch.setattr(Bridges, "forward", lambda self, i, h: calls.append(i) or forward(self, i, h))
    cfg = TrainConfig(data=str(write_math(tmp_path / "m.jsonl", 40)), out=str(tmp_path / "g"), steps=2, examples=2,
                      max_len=40, width=16, calib_prompts=0, dtype="float32", estimator=estimator,
                      bridges=str(tmp_path / "br"))
    summary = train(cfg, model=gm, progress=False)
    assert calls and gm.bridges is None  # the bridges ran in training and were detached after it
    assert summary["bridges"]["digest"] == bridges.digest()
    policy = load_gates(tmp_path / "g", gm.hf)
    assert policy.trained_bridges == bridges.digest()
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"question": "1+1=", "choices": ["2", "3"], "answer": 0}) + "\n")
    with gm.using(policy):
        with pytest.raises(ValueError, match=f"trained with bridges {bridges.digest()}"):
            evaluate(gm, task="mc", data_files=[str(mc)], budgets=[0.5], methods=["l2a"], out=tmp_path / "r.jsonl",
                     axes=("layers",), progress=False)
        with gm.bridged(bridges):
            (line,) = [r for r in evaluate(gm, task="mc", data_files=[str(mc)], budgets=[0.5], methods=["l2a"],
                                           out=tmp_path / "r.jsonl", axes=("layers",), progress=False)]
    assert line["method"] == "l2a+bridges"
    from l2a.loading import load  # the library loads such gates with a warning unless their bridges come too

    with pytest.warns(UserWarning, match="load with bridges=DIR"):
        load(copy.deepcopy(gm).detach(), gates=tmp_path / "g")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load(copy.deepcopy(gm).detach(), gates=tmp_path / "g", bridges=tmp_path / "br").bridges is not None


def test_training_resumes_only_under_the_bridges_it_started_with(fitted, calib, tmp_path):
    """A training run under bridges refit in place (same path, other maps) refuses to resume; under the same
    maps it resumes from its saved step."""
    from conftest import write_math

    from l2a.train import TrainConfig, train

    gm, bridges = fitted
    save_bridges(bridges, tmp_path / "br")
    cfg = dict(data=str(write_math(tmp_path / "m.jsonl", 40)), out=str(tmp_path / "g"), examples=2, max_len=40,
               width=16, calib_prompts=0, dtype="float32", save_every=1, bridges=str(tmp_path / "br"))
    train(TrainConfig(steps=1, **cfg), model=gm, progress=False)
    save_bridges(fit_bridges(gm, BridgeConfig(calib, ridge=1.0), progress=False), tmp_path / "br")  # refit in place
    with pytest.raises(ValueError, match=f"trained under bridges {bridges.digest()}"):
        train(TrainConfig(steps=2, **cfg), model=gm, progress=False)
    save_bridges(bridges, tmp_path / "br")
    log = tmp_path / "g" / "log.jsonl"
    before = len(log.read_text().splitlines())
    train(TrainConfig(steps=2, **cfg), model=gm, progress=False)
    steps = [json.loads(x).get("step") for x in log.read_text().splitlines()[before:]]
    assert steps == [2] and gm.bridges is None  # only step 2 ran: resumed after step 1
