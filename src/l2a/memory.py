"""memory: *measured* memory of this process and of a KV cache (bench's RSS and KV-bytes columns).

RSS comes from /proc/self/status (VmHWM, resettable through /proc/self/clear_refs on Linux >= 4.0) or, where
that is unavailable, from getrusage's process maximum. KV bytes are the bytes of the tensors a cache holds
(a `kvcache.RowCache` reports its own). Modeled bytes live in cost.py.
"""

from __future__ import annotations

import resource
import sys


def status_kib(key: str) -> int | None:
    """A `/proc/self/status` field in KiB (None where unreadable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return status_kib("VmHWM") is not None
    except OSError:
        return False


def max_rss_kib() -> int:
    """The process maximum RSS in KiB (monotone)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r  # bytes on macOS, KiB on Linux


def cache_bytes(cache) -> int:
    """Bytes of the key and value tensors a cache holds (0 for None)."""
    if cache is None:
        return 0
    if hasattr(cache, "kv_bytes"):  # RowCache
        return cache.kv_bytes()
    return sum(
        x.numel() * x.element_size() for layer in cache.layers if layer.is_initialized for x in (layer.keys, layer.values)
    )
