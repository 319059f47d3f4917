"""scoring: the tensor side of scoring items: tokenizing, left padding, and one model pass that returns
each row's continuation log-probabilities under the decisions its prompt made.

`routed_logprobs` is the pass every scoring task runs (tasks.py): rows that continue one prompt (an item's
choices) run one decision, made inside the pass by the learned gates (`decide.score`) or on the prompts
first by any other policy. `continuation_logprobs` scores rows under given decisions. Only the positions
that predict a continuation token reach the LM head and the log-softmax (`logits_to_keep` as a (B, T)
mask). No task logic here (prompts, answers, metrics: tasks.py).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from .gated import prefill_positions

Decide = Callable[[torch.Tensor, torch.Tensor], list]  # (ids (B, T), mask (B, T)) -> list[GateDecision]


def encode(tok, text: str, special: bool = False) -> list[int]:
    return list(tok(text, add_special_tokens=special)["input_ids"])


def pad_token(tok) -> int:
    """The id left padding uses: pad, else eos (masked out either way)."""
    for t in (tok.pad_token_id, tok.eos_token_id, 0):
        if t is not None:
            return int(t)
    return 0


def prefix_token(tok) -> int:
    """Single context token for sequences with no prompt (lm-eval's prefix token: eos, else bos)."""
    for t in (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, 0):
        if t is not None:
            return int(t)
    return 0


def left_pad(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, T), mask (B, T)) with every row right-aligned."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def continuation_logprobs(model, seqs: list[list[int]], conts: list[int], decisions: list, pad_id: int):
    """Per sequence: (summed logprob of its last `conts[i]` tokens, (k_i,) logprobs, (k_i,) greedy hits).

    seqs[i] = context + continuation; the continuation is the last conts[i] tokens. Only the positions
    predicting them reach the LM head (`logits_to_keep` as a (B, T) mask).
    """
    ids, mask = left_pad(seqs, pad_id, model.device)  # (B, T)
    logits = model.forward(ids, mask, decisions=decisions, **_scoring_kw(mask, conts))
    return _continuations(logits, ids, conts)


@torch.inference_mode()
def routed_logprobs(model, decide: Decide, seqs: list[list[int]], conts: list[int], prompt_lens: list[int],
                    owner: list[int], pad_id: int):
    """(`continuation_logprobs` of the rows, the decision each row ran) when the decisions come from prompts.

    Row i's first `prompt_lens[i]` tokens are its prompt, and the prompt of row `owner[i]` decides it: rows
    that continue one prompt (the choices of an item) run one decision. A decider that decides inside the
    scoring pass (`decide.score`: the learned gates, whose router pass then starts this pass) runs each
    prompt once; any other decides on the prompts first, then scores.
    """
    ids, mask = left_pad(seqs, pad_id, model.device)  # (B, T)
    kw = _scoring_kw(mask, conts)
    score = getattr(decide, "score", None)
    if score is not None:
        T = ids.shape[1]
        start = T - torch.tensor([len(s) for s in seqs])  # (B,) first real position of each row
        col = torch.arange(T)  # (T,)
        route = (col >= start[:, None]) & (col < (start + torch.tensor(prompt_lens))[:, None])  # (B, T)
        logits, ds = score(ids, mask, route.to(ids.device), torch.tensor(owner, device=ids.device), **kw)
    else:
        firsts = sorted(set(owner))
        made = dict(zip(firsts, decide_on(model, decide, [seqs[i][:prompt_lens[i]] for i in firsts], pad_id)))
        ds = [made[o] for o in owner]
        logits = model.forward(ids, mask, decisions=ds, **kw)
    return _continuations(logits, ids, conts), ds


def _scoring_kw(mask, conts: list[int]) -> dict:
    """Forward arguments of a scoring pass: only the positions predicting a continuation token reach the
    LM head and the log-softmax (left padding puts row i's `conts[i]` tokens at the right end)."""
    T = mask.shape[1]
    k = torch.tensor(conts, device=mask.device)[:, None]  # (B, 1)
    col = torch.arange(T, device=mask.device)  # (T,)
    keep = (col >= T - 1 - k) & (col < T - 1)  # (B, T): position t predicts token t + 1
    return {"position_ids": prefill_positions(mask), "logits_to_keep": keep}


def _continuations(logits, ids, conts: list[int]) -> list:
    """Split packed logits (M, V), row i's last `conts[i]` predictions in order, into per-row results."""
    T = ids.shape[1]
    logp = torch.log_softmax(logits.float(), dim=-1)  # (M, V)
    target = torch.cat([ids[i, T - k:] for i, k in enumerate(conts)])  # (M,)
    tok_lp = logp.gather(-1, target[:, None]).squeeze(-1)  # (M,)
    hit = logp.argmax(-1) == target  # (M,)
    out, start = [], 0
    for k in conts:
        lp = tok_lp[start : start + k]
        out.append((float(lp.sum()), lp, hit[start : start + k]))
        start += k
    return out


def batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def decide_on(model, decide: Decide, prompts: list[list[int]], pad_id: int) -> list:
    ids, mask = left_pad(prompts, pad_id, model.device)
    ds = decide(ids, mask)
    if len(ds) != len(prompts):
        raise ValueError(f"the policy returned {len(ds)} decisions for {len(prompts)} prompts")
    return ds
