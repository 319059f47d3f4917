"""swap: the teacher-forced KL of removed-layer sets, and the searches over them (greedy order, block starts, swaps).

`SetKL` scores a set of skipped layers by KL(dense ‖ skipped) over the answer tokens of (prompt, answer)
pairs: the dense log-probs are computed once, the pairs run in length-sorted chunks (`search_chunks`),
and a set that differs from a scored one only at layer j or later resumes from that set's layer outputs
(`GatedModel.forward(reuse=)`: the same numbers, fewer layers run). The greedy order
(`greedy_kl_order`) and the swap search both run on it.

The greedy order fixes each removal given the earlier ones, and at deep budgets its path can miss much
better sets: on SmolLM2 at 0.55 of the layers, its set's KL on 32 held-out GSM8K chains is 3.46 where a set
another search found has 2.65 (`scripts/set_kl.py`). `swap_refine` starts from a set and makes the best
exchange of one removed layer for one kept candidate while that lowers the KL (up to `max_sweeps`
exchanges; an exchange that puts back i and removes j resumes at j, from the set with i put back when
j > i, else from the current set): one set per budget, not an order, and a local optimum only (from
another start it may stall in another basin). Single exchanges from greedy's set often stall in its basin
(SmolLM2 at 0.55: one exchange, KL 2.99 -> 2.90, where the middle-block set scores 2.37), so `block_start`
offers another start: greedy's first k removals completed by a contiguous block of layers (the shape
ShortGPT-style removal finds), the best over k and the block's place. `refine` runs either search: the
`greedy-swap` and `block-swap` baselines (static.py) remove its set at each budget. `nested_order` puts a
refined set back into an order (its layers first, each part in the order's own sequence), so every
shallower prefix is a subset of it: training's warm start with `warm_refine` starts the gates there
(warmstart.py). Not here: which pairs are searched (static.py).
"""

from __future__ import annotations

import torch

from . import arch
from .decision import GateDecision

MAX_SWEEPS = 6  # swap_refine: exchanges at most (each sweep tries every one and makes the best)


SEARCH_TOKENS = 4096  # greedy search: padded tokens per chunk (16 GSM8K pairs of 160 tokens fit one)


def search_chunks(pairs: list, tokens: int | None = None) -> list[list]:
    """`pairs` [(prompt ids, answer ids)] as the greedy search runs them: all in one chunk, in the given
    order, when their right-padded batch fits `tokens`; else sorted by length and cut into chunks that
    each fit (`tokens`: SEARCH_TOKENS by default), so short pairs (multiple-choice ones are ~27 tokens, GSM8K's
    ~160) carry little padding."""
    tokens = tokens or SEARCH_TOKENS
    size = lambda part: len(part) * max(len(p) + len(a) for p, a in part)  # noqa: E731  padded tokens
    if not pairs or size(pairs) <= tokens:
        return [list(pairs)]
    chunks, cur = [], []
    for pair in sorted(pairs, key=lambda pa: len(pa[0]) + len(pa[1])):
        if cur and size(cur + [pair]) > tokens:
            chunks.append(cur)
            cur = []
        cur.append(pair)
    return chunks + [cur]


class SetKL:
    """KL(dense ‖ model with `drop` skipped) per answer token of `pairs` [(prompt ids, answer ids)]."""

    @torch.no_grad()
    def __init__(self, model, pairs: list, pad_id: int = 0):
        from .losses import logits_keep
        from .examples import example_batch

        self.model, self.n = model, model.n_layers
        self.layers = arch.decoder_layers(model.hf)
        self.chunks = []  # [(ids (n, T), attention (n, T), keep (n, T), dense log-probs (M, V), their probs)]
        for part in search_chunks(pairs):
            ids, attn, _, ans = example_batch(part, pad_id)  # (n, T) right-padded
            keep = logits_keep(ans[:, 1:])  # (n, T) positions predicting an answer token
            dense = torch.log_softmax(model.forward(ids, attn, logits_to_keep=keep).float(), -1)  # (M, V)
            self.chunks.append((ids, attn, keep, dense, dense.exp()))
        self.positions = sum(len(c[3]) for c in self.chunks)

    def _decisions(self, drop, rows: int) -> list[GateDecision]:
        return [GateDecision.dropping(self.n, drop)] * rows

    @torch.no_grad()
    def outputs(self, drop) -> list[dict[int, torch.Tensor]]:
        """Per chunk, every layer's output (n, T, H) with `drop` skipped (no LM head run)."""
        per = []
        for ids, attn, keep, _, _ in self.chunks:
            outs = {}
            hooks = [layer.register_forward_hook(lambda mod, a, o, i=i: outs.__setitem__(i, o))
                     for i, layer in enumerate(self.layers)]
            try:
                self.model.forward(ids, attn, decisions=self._decisions(drop, len(ids)),
                                   logits_to_keep=torch.zeros_like(keep))
            finally:
                for h in hooks:
                    h.remove()
            per.append(outs)
        return per

    @torch.no_grad()
    def __call__(self, drop, per: list | None = None, same_before: int = 0) -> float:
        """Mean KL with `drop` skipped; the layers before `same_before` resume from `per` (the outputs of a
        set that skips the same layers there)."""
        from .losses import position_kl

        total = 0.0
        for i, (ids, attn, keep, dense, dense_p) in enumerate(self.chunks):
            reuse = {j: per[i][j] for j in range(same_before)} if per is not None else None
            logits = self.model.forward(ids, attn, decisions=self._decisions(drop, len(ids)), logits_to_keep=keep,
                                        reuse=reuse)
            total += position_kl(dense, torch.log_softmax(logits.float(), -1), dense_p).sum().item()
        return total / self.positions


@torch.no_grad()
def greedy_kl_order(model, pairs, candidates, n_remove: int, pad_id: int = 0, progress: bool = True) -> list[int]:
    """`candidates` (layer indices), least important first, by greedy removal: each step drops the layer
    whose removal (with those dropped before) raises teacher-forced KL(dense ‖ pruned) over the answer
    tokens of `pairs` [(prompt ids, answer ids)] the least. After `n_remove` steps the rest follow in
    the order of their last step's KL. The pairs run in length-sorted chunks (`search_chunks`: one chunk,
    in the given order, whenever they fit); the dense log-probs are computed once, only answer positions
    reach the LM head, and each candidate resumes from the step's shared layer outputs before it
    (`GatedModel.forward(reuse=)`: the same numbers, about half the layers run). Cost: ~n_remove *
    len(candidates) / 2 forwards of the pairs' tokens (SmolLM2, 16 pairs of <= 160 tokens, 18 steps: ~5 min
    on 2 cores)."""
    from tqdm import tqdm

    kl = SetKL(model, pairs, pad_id)
    removed: list[int] = []
    last: dict[int, float] = {}
    for _ in tqdm(range(min(n_remove, len(candidates))), desc="greedy layer removal", disable=not progress):
        per = kl.outputs(removed)
        last = {j: kl({*removed, j}, per, j) for j in candidates if j not in removed}  # layers before j: removed's
        removed.append(min(last, key=last.get))
    return removed + sorted((j for j in candidates if j not in removed), key=lambda j: last.get(j, 0.0))


def swap_refine(kl: SetKL, removed, candidates, max_sweeps: int = MAX_SWEEPS, progress: bool = True) -> dict:
    """Best-improvement local search from the set `removed` over exchanges of one removed layer for one kept
    `candidates` layer, under `kl`. Returns {"removed": sorted set, "kl": its KL, "start_kl": the start's,
    "swaps": [[out, in], ...] in the order made}."""
    from tqdm import tqdm

    cur = set(removed)
    start = best = kl(cur)
    swaps = []
    for sweep in range(max_sweeps):
        per = kl.outputs(cur)
        scores = {}
        for i in tqdm(sorted(cur), desc=f"swap refinement, sweep {sweep + 1}", disable=not progress, leave=False):
            back = kl.outputs(cur - {i})  # layer i put back: the exchanges' layers before j (> i) are these
            for j in (j for j in candidates if j not in cur):  # before j (< i), cur's: either way j layers resume
                scores[i, j] = kl(cur - {i} | {j}, back if j > i else per, j)
        if not scores:
            break
        (i, j), val = min(scores.items(), key=lambda kv: kv[1])
        if val >= best:
            break
        cur, best = cur - {i} | {j}, val
        swaps.append([i, j])
    return {"removed": sorted(cur), "kl": best, "start_kl": start, "swaps": swaps}


@torch.no_grad()
def block_start(kl: SetKL, order: list[int], removals: int, candidates, progress: bool = True) -> dict:
    """The lowest-KL set of `removals` layers made of `order`'s first k (k = 0 .. removals - 2) and a block of
    removals - k consecutive `candidates` layers outside them. Each block resumes at its first layer from the
    outputs of order[:k] (the same layers are skipped before it). Returns {"removed": sorted set, "kl",
    "k", "block": [first, last]}; {} when no block fits."""
    from tqdm import tqdm

    cand = set(candidates)
    best: dict = {}
    for k in tqdm(range(removals - 1), desc="block starts", disable=not progress, leave=False):
        head, n = set(order[:k]), removals - k
        blocks = [range(a, a + n) for a in range(min(cand), max(cand) - n + 2)
                  if all(j in cand and j not in head for j in range(a, a + n))]
        if not blocks:
            continue
        per = kl.outputs(head)
        for block in blocks:
            val = kl(head | set(block), per, block[0])
            if not best or val < best["kl"]:
                best = {"removed": sorted(head | set(block)), "kl": val, "k": k, "block": [block[0], block[-1]]}
    return best


def refine(kl: SetKL, order: list[int], removals: int, candidates, blocks: bool, progress: bool = True) -> dict:
    """The set of `removals` layers searched past the greedy `order`: swap_refine started from order's first
    layers or, with `blocks`, from the better of those and block_start's set. Returns swap_refine's dict plus
    "greedy_kl" (the KL of order's set) and, with `blocks`, "block_start"."""
    greedy_kl = kl(set(order[:removals]))
    block = block_start(kl, order, removals, candidates, progress) if blocks else {}
    start = block["removed"] if block and block["kl"] < greedy_kl else order[:removals]
    return {"greedy_kl": greedy_kl, **({"block_start": block} if blocks else {}),
            **swap_refine(kl, start, candidates, progress=progress)}


def nested_order(order: list[int], removed) -> list[int]:
    """`order` (least important first) with the layers of `removed` moved ahead of the others, each part in
    `order`'s sequence: its first len(removed) layers are `removed`, and each shorter prefix is a subset of
    them (an order nests its sets, as the gates' decisions do). Prefixes that already lay inside `removed`
    are unchanged."""
    inside = set(removed)
    if not inside <= set(order):
        raise ValueError(f"layers {sorted(inside - set(order))} are not in the order")
    return [j for j in order if j in inside] + [j for j in order if j not in inside]
