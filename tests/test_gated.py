"""GatedModel against plain transformers: the oracles of DESIGN §3 and issue 2.

- all kept: logits and greedy generations `torch.equal` to the unwrapped model;
- a fixed decision: equal to the HF model physically pruned to the same layers/groups, built here by
  independent code (not l2a.prune), with and without padding; close to a masked reference;
- a mixed batch: equal to each row run alone;
- KV held per row equals the cost model; detach restores the model.
"""

import copy

import pytest
import torch
from conftest import left_pad, prompts, tiny_model
from torch import nn

from l2a.cost import CostModel
from l2a.decision import GateDecision
from l2a.gated import GatedModel
from l2a.prune import prune_model

NEW = 6


def greedy(model, ids, mask=None, n=NEW):
    return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False)


def oracle_prune(model, decision: GateDecision):
    """Physically prune a deep copy by explicit per-head slicing (independent of l2a.arch)."""
    model = copy.deepcopy(model)
    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    rep = n_heads // n_kv
    kept_layers = []
    for i, layer in enumerate(model.model.layers):
        if not decision.layers[i]:
            continue
        attn = layer.self_attn
        if decision.kv_groups is not None:
            groups = [g for g in range(n_kv) if decision.kv_groups[i][g]]
            heads = [h for h in range(n_heads) if h // rep in groups]

            def rows(lin, units):
                w = torch.cat([lin.weight[u * d : (u + 1) * d] for u in units])
                b = None if lin.bias is None else torch.cat([lin.bias[u * d : (u + 1) * d] for u in units])
                new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
                new.weight.data, new.bias = w.clone(), None if b is None else nn.Parameter(b.clone())
                return new

            o = attn.o_proj
            o_new = nn.Linear(len(heads) * d, o.weight.shape[0], bias=o.bias is not None)
            o_new.weight.data = torch.cat([o.weight[:, h * d : (h + 1) * d] for h in heads], dim=1).clone()
            if o.bias is not None:
                o_new.bias.data = o.bias.data.clone()
            attn.q_proj, attn.k_proj, attn.v_proj = rows(attn.q_proj, heads), rows(attn.k_proj, groups), rows(attn.v_proj, groups)
            attn.o_proj = o_new
        attn.layer_idx = len(kept_layers)
        kept_layers.append(layer)
    model.model.layers = nn.ModuleList(kept_layers)
    cfg.num_hidden_layers = len(kept_layers)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = cfg.layer_types[: len(kept_layers)]
    return model.eval()


def masked_logits(model, decision: GateDecision, ids):
    """Masked reference (DESIGN decision 7): skipped layers are identity, pruned heads' outputs zeroed."""
    model = copy.deepcopy(model)
    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    rep = n_heads // n_kv

    class Identity(nn.Module):
        def forward(self, h, *a, **k):
            return h

    for i, layer in enumerate(model.model.layers):
        if not decision.layers[i]:
            model.model.layers[i] = Identity()
        elif decision.kv_groups is not None:
            mask = torch.tensor([decision.kv_groups[i][h // rep] for h in range(n_heads) for _ in range(d)])
            layer.self_attn.o_proj.register_forward_pre_hook(lambda mod, args, m=mask: (args[0] * m,))
    with torch.no_grad():
        return model(ids, use_cache=False).logits


DECISION = GateDecision(
    layers=[True, False, True, True],
    kv_groups=[[True, False, True, True], [False] * 4, [False, True, False, True], [True] * 4],
)
DECISIONS = [
    DECISION,
    GateDecision(layers=[True, True, False, True]),
    GateDecision.dense(4),
    GateDecision(layers=[False, True, True, False], kv_groups=[[True] * 4, [True, True, False, False], [True] * 4, [True] * 4]),
]


@torch.no_grad()
def test_full_budget_is_bit_identical(model):
    ref = copy.deepcopy(model)
    ids = prompts(3, 7)
    ids_p, mask = left_pad(ids, [0, 2, 4])
    ref_logits, ref_gen = ref(ids).logits, greedy(ref, ids)
    ref_logits_p, ref_gen_p = ref(ids_p, attention_mask=mask).logits, greedy(ref, ids_p, mask)
    g = GatedModel(model)
    assert torch.equal(g.forward(ids), ref_logits)
    assert torch.equal(g.forward(ids, decisions=GateDecision.dense(4)), ref_logits)
    assert torch.equal(g.generate(ids, max_new_tokens=NEW), ref_gen)
    assert torch.equal(g.forward(ids_p, attention_mask=mask), ref_logits_p)
    assert torch.equal(g.generate(ids_p, attention_mask=mask, max_new_tokens=NEW), ref_gen_p)
    # with no plan active the wrappers are transparent: the plain HF call is unchanged too
    assert torch.equal(model(ids).logits, ref_logits)


@torch.no_grad()
@pytest.mark.parametrize("pad", [False, True])
def test_fixed_decision_equals_physically_pruned(model, pad):
    ids = prompts(3, 9)
    mask = None
    if pad:
        ids, mask = left_pad(ids, [0, 3, 5])
    for decision in DECISIONS:
        oracle = oracle_prune(model, decision)
        want_logits = oracle(ids, attention_mask=mask).logits
        want_gen = greedy(oracle, ids, mask)
        g = GatedModel(model)
        try:
            assert torch.equal(g.forward(ids, attention_mask=mask, decisions=decision), want_logits)
            assert torch.equal(g.generate(ids, attention_mask=mask, decisions=decision, max_new_tokens=NEW), want_gen)
        finally:
            g.detach()
        # l2a's own prune_model (the bench's speed limit) agrees with the oracle too
        pruned = prune_model(model, decision)
        assert torch.equal(pruned(ids, attention_mask=mask).logits, want_logits)
        assert torch.equal(greedy(pruned, ids, mask), want_gen)


@torch.no_grad()
def test_pruning_matches_masked_reference(model):
    ids = prompts(2, 8)
    g = GatedModel(model)
    got = g.forward(ids, decisions=DECISION)
    g.detach()
    torch.testing.assert_close(got, masked_logits(model, DECISION, ids), rtol=1e-5, atol=1e-5)
    # and it really differs from dense: the decision is not a no-op
    assert not torch.allclose(got, model(ids).logits, atol=1e-3)


@torch.no_grad()
@pytest.mark.parametrize("pad", [False, True])
def test_mixed_batch_equals_rows_alone(model, pad):
    ids = prompts(4, 8)
    mask = torch.ones_like(ids)
    lengths = [8] * 4
    if pad:
        ids, mask = left_pad(ids, [0, 2, 3, 5])
        lengths = [8, 6, 5, 3]
    g = GatedModel(model)
    mixed_logits = g.forward(ids, attention_mask=mask, decisions=DECISIONS)
    mixed_gen = g.generate(ids, attention_mask=mask, decisions=DECISIONS, max_new_tokens=NEW)
    for i, d in enumerate(DECISIONS):
        alone = ids[i : i + 1, -lengths[i] :]  # the row without its padding
        logits = g.forward(alone, decisions=d)
        # Batched GEMMs round differently from single-row ones (plain HF shows the same ~1e-7).
        torch.testing.assert_close(mixed_logits[i, -lengths[i] :], logits[0], rtol=1e-5, atol=1e-5)
        gen = g.generate(alone, decisions=d, max_new_tokens=NEW)
        assert torch.equal(mixed_gen[i, -NEW:], gen[0, -NEW:])


@torch.no_grad()
def test_reuse_of_a_shared_prefix_is_exact(model):
    """A search that varies one layer resumes from the outputs the layers before it gave in a base pass."""
    from l2a import arch

    ids, mask = left_pad(prompts(3, 8), [0, 2, 3])
    g = GatedModel(model)
    outs = {}
    hooks = [layer.register_forward_hook(lambda mod, a, o, i=i: outs.__setitem__(i, o))
             for i, layer in enumerate(arch.decoder_layers(g.hf))]
    g.forward(ids, attention_mask=mask, decisions=GateDecision(layers=[True, True, False, True]))
    for h in hooks:
        h.remove()
    varied = [GateDecision(layers=[True, True, False, False])] * 3  # agrees with the base pass up to layer 3
    want = g.forward(ids, attention_mask=mask, decisions=varied)
    got = g.forward(ids, attention_mask=mask, decisions=varied, reuse={i: outs[i] for i in range(3)})
    assert torch.equal(got, want)
    # the given outputs are what runs on: different ones change the logits
    wrong = g.forward(ids, attention_mask=mask, decisions=varied, reuse={0: outs[0], 1: outs[1] + 1, 2: outs[1] + 1})
    assert not torch.allclose(wrong, want, atol=1e-3)
    with pytest.raises(ValueError, match="reuse= needs explicit decisions and no cache"):
        g.forward(ids, attention_mask=mask, decisions=varied, reuse={0: outs[0]}, use_cache=True)


@torch.no_grad()
def test_kv_held_per_row_matches_cost_model(model):
    ids = prompts(4, 8)
    g = GatedModel(model)
    g.generate(ids, decisions=DECISIONS, max_new_tokens=NEW)
    cache = g.last_cache
    tokens = cache.get_seq_length()
    assert tokens == 8 + NEW - 1  # the last generated token is never fed back
    cost = CostModel.from_config(model.config)
    want = [cost.kv_bytes(d, tokens=tokens) for d in DECISIONS]
    assert cache.row_kv_bytes() == want
    assert cache.kv_bytes() == sum(want)
    # slots exist only for executed layers, holding only kept groups of only the rows that run them
    geo_groups = model.config.num_key_value_heads
    for (layer, rows, groups), (slot_rows, shape) in cache.slot_shapes().items():
        assert rows == slot_rows
        assert all(DECISIONS[r].layers[layer] for r in rows)
        assert shape[0] == len(rows) and shape[2] == tokens
        assert shape[1] == (geo_groups if groups is None else len(groups))
    # dense: a single slot per layer, like a DynamicCache
    g.generate(ids, max_new_tokens=NEW)
    assert len(g.last_cache.slot_shapes()) == 4


@torch.no_grad()
def test_detach_restores_model(model):
    ref = copy.deepcopy(model)
    keys = list(model.state_dict())
    ids = prompts(2, 5)
    g = GatedModel(model)
    g.generate(ids, decisions=DECISION, max_new_tokens=3)
    hf = g.detach()
    assert hf is model
    assert list(hf.state_dict()) == keys
    assert torch.equal(hf(ids).logits, ref(ids).logits)
    with pytest.raises(RuntimeError, match="detached"):
        g.forward(ids)
    GatedModel(hf).detach()  # can attach again


def test_attach_twice_refused(model):
    GatedModel(model)
    with pytest.raises(ValueError, match="already"):
        GatedModel(model)


@torch.no_grad()
def test_sampling_and_streaming(model):
    ids = prompts(2, 5)
    g = GatedModel(model)
    seen = []
    torch.manual_seed(0)
    out = g.generate(ids, decisions=[DECISION, DECISIONS[1]], max_new_tokens=NEW, do_sample=True, top_k=0, on_token=seen.append)
    assert out.shape == (2, 5 + NEW)
    assert len(seen) == NEW and all(t.shape == (2,) for t in seen)
    assert torch.equal(torch.stack(seen, 1), out[:, 5:])
    torch.manual_seed(0)
    again = g.generate(ids, decisions=[DECISION, DECISIONS[1]], max_new_tokens=NEW, do_sample=True, top_k=0)
    assert torch.equal(out, again)


@torch.no_grad()
def test_cache_continuation_and_refusal(model):
    """Prefill + step-by-step forward with a RowCache equals a full forward; other decisions are refused."""
    ids = prompts(2, 9)
    g = GatedModel(model)
    full = g.forward(ids, decisions=[DECISION, DECISIONS[1]])
    g.forward(ids[:, :6], decisions=[DECISION, DECISIONS[1]], use_cache=True)
    cache = g.last_cache
    steps = [g.forward(ids[:, t : t + 1], decisions=[DECISION, DECISIONS[1]], past_key_values=cache) for t in range(6, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 6:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="other gate decisions"):
        g.forward(ids[:, :1], decisions=[DECISIONS[1], DECISION], past_key_values=cache)


def test_bad_decisions_are_clear_errors(model):
    g = GatedModel(model)
    ids = prompts(2, 4)
    with pytest.raises(ValueError, match="4 decoder layers"):
        g.forward(ids, decisions=GateDecision(layers=[True] * 3))
    with pytest.raises(ValueError, match="KV-head groups"):
        g.forward(ids, decisions=GateDecision(layers=[True] * 4, kv_groups=[[True, False]] * 4))
    with pytest.raises(ValueError, match="one per row"):
        g.forward(ids, decisions=[DECISION] * 3)
    with pytest.raises(ValueError, match="beam"):
        g.generate(ids, num_beams=2)


def test_unknown_architecture_is_refused():
    import transformers as tf

    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="llama, mistral, qwen2, qwen3"):
        GatedModel(gpt2)


def test_tiny_models_are_gqa():
    for arch in ("llama", "qwen2", "qwen3"):
        cfg = tiny_model(arch).config
        assert cfg.num_key_value_heads < cfg.num_attention_heads
