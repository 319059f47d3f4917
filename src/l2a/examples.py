"""The examples gates are fit on and the router's view of them: GSM8K-style (prompt, answer) pairs, their
seeded order (calibration prompts first, held-out ones last), right-padded batches, and the router's input
(prompt hidden states pooled exactly as `generate(budget=...)` pools them). Shared by training, calibration,
checkpoint selection, the depth head and the gate checks; the training loop itself is train.py.
"""

from __future__ import annotations

import torch

from .gates import GatePolicy


def math_examples(cfg, tok, cut: int | None = None) -> tuple[list[tuple[list[int], list[int]]], str]:
    """[(prompt ids, answer ids)] from GSM8K-style rows, and the data source that ran. Prompts that fit
    `cfg.max_len`; answers cut at `cut` tokens with the prompt (default `cfg.max_len`): the same examples."""
    from .data import load_math
    from .tasks import math_prompt, solution_ids

    rows, source = load_math(cfg.data, split="train")
    if cfg.limit:
        rows = rows[: cfg.limit]
    out = []
    for r in rows:
        prompt = math_prompt(tok, r["question"])
        ans = solution_ids(tok, r["answer"])
        if len(prompt) + 8 <= cfg.max_len:
            out.append((prompt, ans[: (cut or cfg.max_len) - len(prompt)]))
    if len(out) < cfg.examples + cfg.calib_prompts:
        raise ValueError(f"only {len(out)} usable training examples in {source}; need more than {cfg.examples + cfg.calib_prompts}")
    return out, source


def example_order(cfg, n: int) -> list[int]:
    """The seeded order of a run's n examples: calibration prompts first, then training; the end is held out
    (warm-start search, validation, depth head). Calibration and the depth fit rebuild it from the config."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()


def example_batch(exs, pad_id: int):
    """Right-padded (ids, attention, prompt mask, answer-target mask), each (N, T)."""
    T = max(len(p) + len(a) for p, a in exs)
    N = len(exs)
    ids = torch.full((N, T), pad_id, dtype=torch.long)
    attn, prompt, answer = (torch.zeros(N, T) for _ in range(3))
    for i, (p, a) in enumerate(exs):
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        prompt[i, : len(p)] = 1
        answer[i, len(p) : len(seq)] = 1
    return ids, attn.long(), prompt, answer



@torch.no_grad()
def pooled_prompts(m, policy: GatePolicy, prompts: list[list[int]], pad_id: int, batch: int = 16) -> torch.Tensor:
    """(N, H) router inputs of prompts exactly as `generate(budget=...)` computes them (its positions)."""
    from .scoring import left_pad

    out = []
    for i in range(0, len(prompts), batch):
        ids, mask = left_pad(prompts[i : i + batch], pad_id, m.device)
        out.append(GatePolicy.pool(router_hidden(m, policy, ids, mask)[0], mask))
    return torch.cat(out)


@torch.no_grad()
def teacher_pass(m, ids, attn, prompt_mask, router_layers: int):
    """Dense log-probs (N, T-1, V) and the router input pooled over prompt tokens (N, H), in one pass."""
    t_logits, hidden = m.forward_with_hidden(ids, attn, layer=router_layers - 1)
    return torch.log_softmax(t_logits[:, :-1].float(), -1), GatePolicy.pool(hidden, prompt_mask)


def router_hidden(m, policy, ids, mask):
    """Router-layer hidden states (B, T, H) for a policy not (yet) attached to `m`."""
    from .gated import prefill_positions

    with m.using(policy):
        return m._router_pass(ids, mask, prefill_positions(mask))
