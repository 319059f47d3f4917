"""RowCache: a transformers `Cache` whose KV storage follows each row's gate decision.

Why our own cache (DESIGN §3): the stock `DynamicCache` keeps one tensor per layer for the whole batch, so
a layer that only some rows execute either corrupts it (per-layer lengths diverge) or must store KV for rows
that never use it. Here storage is split into *slots*: one slot per (layer, set of rows executing it, KV
groups they keep). A slot holds `(B_s, G_s, T, D)` keys and values for exactly those rows and groups, so a
skipped layer holds nothing and a pruned group holds nothing, per row.

All rows advance in lockstep (every forward appends the same number of positions to every slot), so the
sequence length, mask sizes and query offset are global, which is what HF's mask and position code asks
the cache for. Slots are created on first use and never change owner; the decisions a cache was filled
with are recorded and a different set is refused (DESIGN decision 1: no silent cache corruption).
"""

from __future__ import annotations

from collections.abc import Hashable

from transformers.cache_utils import Cache, DynamicLayer


class _SlotView:
    """What a decoder layer sees as `past_key_values`: HF attention calls `update(k, v, layer_idx)`."""

    __slots__ = ("layer",)

    def __init__(self, layer: DynamicLayer):
        self.layer = layer

    def update(self, key_states, value_states, *args, **kwargs):
        return self.layer.update(key_states, value_states)


class RowCache(Cache):
    """KV cache with per-(layer, row set, group set) slots. Created and filled by `GatedModel`."""

    def __init__(self, batch_size: int, decisions: tuple | None = None):
        super().__init__(layers=[])
        self.batch = batch_size  # rows of the batch this cache serves
        self.decisions = decisions  # the per-row decisions it was filled with (fixed for its lifetime)
        self._slots: dict[Hashable, tuple[tuple[int, ...], DynamicLayer, _SlotView]] = {}

    # -- slots ---------------------------------------------------------------------------------------------

    def slot(self, key: Hashable, rows: tuple[int, ...]) -> _SlotView:
        """The storage of slot `key` (owned by `rows`), created empty on first use."""
        entry = self._slots.get(key)
        if entry is None:
            layer = DynamicLayer()
            entry = (rows, layer, _SlotView(layer))
            self._slots[key] = entry
            self.layers.append(layer)
        return entry[2]

    # -- what HF's model and generate code ask a cache --------------------------------------------------

    def get_seq_length(self, layer_idx: int = 0) -> int:
        # Every slot has the same length (rows advance in lockstep); an empty cache has none.
        for layer in self.layers:
            return layer.get_seq_length()
        return 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.get_seq_length()

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        raise RuntimeError(
            "RowCache is filled through GatedModel's decoder-layer wrappers; it cannot be used with an "
            "unwrapped model. Use GatedModel.forward/generate, or a DynamicCache for the plain model."
        )

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError("RowCache does not support beam search, cropping or batch reordering")

    reorder_cache = crop = batch_repeat_interleave = batch_select_indices = _unsupported

    # -- accounting ----------------------------------------------------------------------------------------

    def kv_bytes(self) -> int:
        """Bytes of keys and values held, over all slots."""
        total = 0
        for _, layer, _ in self._slots.values():
            if layer.is_initialized:
                total += layer.keys.numel() * layer.keys.element_size()
                total += layer.values.numel() * layer.values.element_size()
        return total

    def row_kv_bytes(self) -> list[int]:
        """(B,) bytes of keys and values held on behalf of each row."""
        per_row = [0] * self.batch
        for rows, layer, _ in self._slots.values():
            if not layer.is_initialized:
                continue
            b = layer.keys.shape[0]  # rows stored in this slot
            share = (layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()) // b
            for r in rows:
                per_row[r] += share
        return per_row

    def slot_shapes(self) -> dict:
        """{slot key: (rows, keys shape)}: for tests and debugging."""
        return {k: (rows, tuple(layer.keys.shape)) for k, (rows, layer, _) in self._slots.items() if layer.is_initialized}

    def __repr__(self):
        return f"RowCache(batch={self.batch}, slots={len(self._slots)}, seq={self.get_seq_length()})"


def _check_same(cache: RowCache, decisions: tuple) -> None:
    if cache.decisions is not None and cache.decisions != decisions:
        raise ValueError(
            "this RowCache was filled with other gate decisions; decisions are fixed for a request's lifetime "
            "(start a new cache to change them)"
        )


def prepare(cache: RowCache | None, batch: int, decisions: tuple) -> RowCache:
    """Reuse `cache` if it was made for these decisions, else a new one."""
    if cache is None:
        return RowCache(batch, decisions)
    if not isinstance(cache, RowCache):
        raise ValueError(f"GatedModel needs a RowCache (or None), got {type(cache).__name__}")
    if cache.batch != batch:
        raise ValueError(f"cache was made for a batch of {cache.batch} rows, got {batch}")
    _check_same(cache, decisions)
    cache.decisions = decisions
    return cache


__all__ = ["RowCache", "prepare"]
