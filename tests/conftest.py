"""Tiny random Llama / Qwen2 / Qwen3 models built in code (GQA on), never downloads."""

import pytest
import torch

ARCHS = ("llama", "qwen2", "qwen3")


def tiny_model(arch: str = "llama", n_layers: int = 4, seed: int = 0):
    """A random *ForCausalLM: hidden 64, 8 query heads over 4 KV heads (head_dim 8; Qwen3: 16), vocab 128."""
    import transformers as tf

    common = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=128,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    elif arch == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))  # q/k/v biases
        with torch.no_grad():  # HF inits biases to zero; make them matter
            for layer in model.model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0, 0.5)
    elif arch == "qwen3":
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(head_dim=16, **common))  # explicit head_dim, q/k norms
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.normal_(1, 0.3)
                layer.self_attn.k_norm.weight.normal_(1, 0.3)
    else:
        raise ValueError(arch)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # never stop early: fixed-length comparisons
    return model.eval()


@pytest.fixture(params=ARCHS)
def arch_name(request):
    return request.param


@pytest.fixture
def model(arch_name):
    return tiny_model(arch_name)


def prompts(batch: int = 3, length: int = 7, seed: int = 1, vocab: int = 128):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g)


def bridged_oracle(gm, bridges, skipped):
    """The plain HF model of `gm` with each `skipped` layer physically replaced by its bridge (the oracle)."""
    import copy

    from l2a import arch

    class Bridge(torch.nn.Module):
        def __init__(self, i):
            super().__init__()
            self.i = i

        def forward(self, hidden_states, *args, **kwargs):
            return bridges(self.i, hidden_states)

    hf = copy.deepcopy(gm).detach()
    layers = arch.decoder_layers(hf)
    for i in skipped:
        layers[i] = Bridge(i)
    return hf


def left_pad(ids: torch.Tensor, pads: list[int], pad_id: int = 0):
    """Left-pad row i of `ids` by pads[i] tokens, dropping as many from its start: (ids, mask)."""
    ids = ids.clone()
    mask = torch.ones_like(ids)
    for i, p in enumerate(pads):
        if p:
            ids[i, :p] = pad_id
            mask[i, :p] = 0
    return ids, mask


def tiny_tokenizer():
    """The character-level tokenizer of `chartok` (fits the tiny models' vocab of 128)."""
    from chartok import char_tokenizer

    return char_tokenizer()


def write_math(path, n: int = 40, seed: int = 0):
    """A tiny GSM8K-style JSONL file: short arithmetic questions with '#### N' answers."""
    import json
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            f.write(json.dumps({"question": f"What is {a}+{b}?", "answer": f"{a}+{b}={a + b}\n#### {a + b}"}) + "\n")
    return path


@pytest.fixture(autouse=True)
def _static_cache(tmp_path_factory, monkeypatch):
    """Searched static orders go to a per-test directory, never the user's cache."""
    from l2a import static

    d = tmp_path_factory.mktemp("static-cache")
    monkeypatch.setattr(static, "_order_cache", lambda: d)
    return d
