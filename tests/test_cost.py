"""CostModel: hand-computed FLOPs and KV bytes, published parameter counts, monotonicity, no torch."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from l2a.cost import CostModel
from l2a.decision import GateDecision

TINY = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, vocab_size=128, tie_word_embeddings=True)
SMOLLM2 = dict(model_type="llama", num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
               num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
               tie_word_embeddings=True)
QWEN25_05B = dict(model_type="qwen2", num_hidden_layers=24, hidden_size=896, intermediate_size=4864,
                  num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
QWEN3_06B = dict(model_type="qwen3", num_hidden_layers=28, hidden_size=1024, intermediate_size=3072,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                 tie_word_embeddings=True)


def tiny_layer_flops(ctx, kept=2):
    """One tiny decoder layer keeping `kept` of 2 groups, written out term by term (H=32 F=64 nq=4 nkv=2 D=8)."""
    q = 2 * 32 * (4 * 8)  # H -> nq*D
    k = 2 * 32 * (2 * 8)  # H -> nkv*D
    v = 2 * 32 * (2 * 8)
    o = 2 * (4 * 8) * 32  # nq*D -> H
    scores = 2 * 4 * 8 * ctx  # QK^T
    av = 2 * 4 * 8 * ctx
    mlp = 3 * 2 * 32 * 64
    return (q + k + v + o + scores + av) * kept // 2 + mlp


LM_HEAD = 2 * 32 * 128


def test_tiny_decode_flops_by_hand():
    cm = CostModel.from_config(TINY)
    assert cm.decode_flops(context=5) == 2 * tiny_layer_flops(5) + LM_HEAD == 46336
    d = GateDecision(layers=[True, False], kv_groups=[[True, False], [True, True]])
    assert cm.decode_flops(d, context=5) == tiny_layer_flops(5, kept=1) + LM_HEAD == 23872


def test_tiny_prefill_and_generate():
    cm = CostModel.from_config(TINY)
    T = 3
    layers = sum(2 * tiny_layer_flops(t) for t in range(1, T + 1))
    assert cm.prefill_flops(prompt_len=T) == layers + LM_HEAD
    assert cm.prefill_flops(prompt_len=T, logits="all") == layers + T * LM_HEAD
    # prefill yields token 1; tokens 2..N come from decode steps at contexts T+1 .. T+N-1
    assert cm.generate_flops(None, T, 1) == cm.prefill_flops(prompt_len=T)
    assert cm.generate_flops(None, T, 4) == (cm.prefill_flops(prompt_len=T)
                                             + sum(cm.decode_flops(context=T + j) for j in (1, 2, 3)))
    d = GateDecision(layers=[False, True], kv_groups=[[True, True], [False, True]])
    assert cm.generate_flops(d, 7, 5) == (cm.prefill_flops(d, 7)
                                          + sum(cm.decode_flops(d, 7 + j) for j in range(1, 5)))


def test_tiny_kv_bytes():
    cm = CostModel.from_config(TINY, dtype_bytes=4)
    # dense: 2 layers x 2 groups, K and V, head_dim 8, fp32, 10 tokens
    assert cm.kv_bytes(tokens=10) == 2 * (2 * 2) * 8 * 4 * 10 == 2560
    d = GateDecision(layers=[True, False], kv_groups=[[False, True], [True, True]])
    assert cm.kv_bytes(d, tokens=10) == 2 * 1 * 8 * 4 * 10 == 640
    assert cm.kv_bytes(d, tokens=10, batch=3) == 3 * 640
    assert cm.batch_kv_bytes([d, None], 10) == 640 + 2560
    assert cm.batch_kv_bytes([d, None], [10, 1]) == 640 + 256
    assert CostModel.from_config(TINY, dtype_bytes=2).kv_bytes(d, tokens=10) == 320
    r = cm.realized(d)
    assert r["layers"] == 0.5 and r["groups"] == 0.5 and r["kv_fraction"] == 0.25
    assert r["flops_fraction_decode"] == cm.decode_flops(d, 512) / cm.decode_flops(None, 512)
    assert cm.realized(None) == {"layers": 1.0, "groups": 1.0, "flops_fraction_decode": 1.0, "kv_fraction": 1.0}


def test_smollm2_decode_is_twice_the_matmul_params():
    cm = CostModel.from_config(SMOLLM2)
    expected = 2 * (30 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536) + 576 * 49152)
    assert abs(cm.decode_flops(context=1) - expected) / expected < 0.01
    assert cm.params() == 134_515_008  # published SmolLM2-135M count
    assert cm.param_bytes() == 4 * 134_515_008
    assert 0.75 < cm.layer_share(1) < cm.layer_share(4096) < 1


def test_published_param_counts_biases_and_head_dim():
    assert CostModel.from_config(QWEN25_05B).params() == 494_032_768  # Qwen2: q/k/v biases, no o bias
    q3 = CostModel.from_config(QWEN3_06B)  # Qwen3: head_dim 128 != 1024 / 16, q_norm / k_norm
    assert q3.head_dim == 128 and q3.params() == 596_049_920


def test_transformers_config_objects():
    transformers = pytest.importorskip("transformers")
    for cls, d in ((transformers.LlamaConfig, SMOLLM2), (transformers.Qwen2Config, QWEN25_05B),
                   (transformers.Qwen3Config, QWEN3_06B)):
        cfg = cls(**{k: v for k, v in d.items() if k != "model_type"})
        assert CostModel.from_config(cfg) == CostModel.from_config(d)
        assert CostModel.from_config(cfg.to_dict()) == CostModel.from_config(d)


def random_decision(rng, L, G):
    layers = [rng.random() < 0.7 for _ in range(L)]
    layers[rng.randrange(L)] = True
    groups = [[rng.random() < 0.7 for _ in range(G)] for _ in range(L)]
    for row in groups:
        row[rng.randrange(G)] = True
    return GateDecision(layers=layers, kv_groups=groups)


def drop_one(rng, d, G):
    """A decision that executes a subset of `d`: one more layer skipped or one more group pruned."""
    layers = list(d.layers)
    groups = [list(r) for r in d.kv_groups] if d.kv_groups else [[True] * G for _ in layers]
    i = rng.choice(d.kept_layers)
    kept = [g for g in range(G) if groups[i][g]]
    if len(kept) > 1 and rng.random() < 0.5:
        groups[i][rng.choice(kept)] = False
    elif sum(layers) > 1:
        layers[i] = False
    return GateDecision(layers=layers, kv_groups=groups)


def costs(cm, d):
    return [cm.decode_flops(d, 1), cm.decode_flops(d, 300), cm.prefill_flops(d, 17), cm.prefill_flops(d, 5, "all"),
            cm.generate_flops(d, 9, 6), cm.kv_bytes(d, 33), cm.params(d)]


def test_monotone_in_layers_and_groups():
    cm = CostModel.from_config(SMOLLM2)
    rng = random.Random(0)
    dense = costs(cm, None)
    for _ in range(200):
        d = random_decision(rng, 30, 3)
        smaller = drop_one(rng, d, 3)
        assert all(a <= b for a, b in zip(costs(cm, d), dense))
        assert all(a <= b for a, b in zip(costs(cm, smaller), costs(cm, d)))


def test_one_layer_left_keeps_lm_head():
    cm = CostModel.from_config(SMOLLM2)
    one = GateDecision(layers=[i == 0 for i in range(30)], kv_groups=[[True, False, False]] * 30)
    H, F, D, qh = 576, 1536, 64, 3
    one_layer = 2 * H * qh * D + 2 * 2 * H * D + 2 * qh * D * H + 2 * 2 * qh * D * 10 + 3 * 2 * H * F
    assert cm.decode_flops(one, context=10) == one_layer + 2 * H * 49152
    assert cm.kv_bytes(one, tokens=10) == 2 * 1 * D * 4 * 10
    assert cm.params(one) > 49152 * H  # the (tied) embedding never shrinks


def test_validation():
    cm = CostModel.from_config(TINY)
    with pytest.raises(ValueError, match="3 layer flags but the model has 2"):
        cm.decode_flops(GateDecision.dense(3))
    with pytest.raises(ValueError, match="3 KV-group flags per layer but the model has 2"):
        cm.kv_bytes(GateDecision(layers=[True, True], kv_groups=[[True, False, True]] * 2), tokens=1)
    with pytest.raises(ValueError, match="context"):
        cm.decode_flops(context=0)
    with pytest.raises(ValueError, match="logits"):
        cm.prefill_flops(prompt_len=2, logits="first")
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        CostModel.from_config({**TINY, "num_key_value_heads": 3})
    with pytest.raises(ValueError, match="lacks"):
        CostModel.from_config({"hidden_size": 8})
    with pytest.raises(ValueError, match="dtype_bytes"):
        CostModel.from_config(TINY, dtype_bytes=0)
    with pytest.raises(TypeError):
        CostModel(n_layers=1, hidden=8, ffn=8, n_heads=1, n_kv_heads=1, head_dim=8, vocab=8, bogus=1)


def test_import_does_not_pull_torch():
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    code = "import sys, l2a.cost; assert 'torch' not in sys.modules, 'l2a.cost imported torch'"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
