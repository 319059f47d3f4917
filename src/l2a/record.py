"""record: the one JSON record every command leaves (DESIGN §6 rule 9).

A record holds what ran (command, config), what came out (results) and where (versions, git SHA, device,
threads, UTC time), so plots and reports read records and never rerun models. Records are appended as
JSON lines. This module does not measure anything (bench.py does) and never fails a run for lack of
provenance: a field it cannot find is None.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path


def run_record(command: str, config, results) -> dict:
    """One record: command, config, results, versions, git_sha, git_dirty, device, threads, time (UTC ISO)."""
    import torch

    from . import __version__
    from .loading import native_bf16

    git_sha, git_dirty = _git_state()
    return {
        "command": command,
        "config": _plain(config),
        "results": _plain(results),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "l2a": __version__,
        },
        "git_sha": git_sha,
        "git_dirty": git_dirty,
        "device": {
            "cpu": _cpu_name(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # e.g. AVX2, AVX512: kernels torch picked
            "native_bf16": native_bf16(),  # False: bfloat16 is emulated here (loading.native_bf16)
            "platform": platform.platform(),
            "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "threads": torch.get_num_threads(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_record(path, record: dict) -> Path:
    """Append `record` to the JSON-lines file at `path` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_plain(record), ensure_ascii=False, allow_nan=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return path


def read_records(path) -> list[dict]:
    """All records in a JSON-lines file, oldest first."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _plain(value):
    """JSON-ready copy: dataclasses -> dicts, tuples -> lists, paths -> str, 0-d tensors/numpy -> numbers."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # torch / numpy scalars and arrays
        return _plain(value.tolist())
    return str(value)  # e.g. torch.dtype, torch.device


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_state() -> tuple[str | None, bool | None]:
    """(HEAD sha, uncommitted changes?) of the l2a source checkout, or (None, None) when not in one."""
    here = Path(__file__).resolve().parent

    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    # Only our own checkout counts: an installed copy inside some other repository must not report its SHA.
    if not top or not (Path(top) / "src" / "l2a" / "__init__.py").is_file():
        return None, None
    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return sha, (None if status is None else bool(status))


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
