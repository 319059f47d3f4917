"""selection: choose the training checkpoint by held-out KL of the layer sets it would run.

Training minimises an expectation over *sampled* gate sets; inference runs one *deterministic* set per
prompt and budget. The two can disagree: a run that lowers its training loss can still rank layers
worse than where it started (a greedy-KL warm start did, see docs/results/gates.md; training from searched
sets moved one of them to a worse set, docs/results/nested). So `l2a train --select val-kl` measures, every
`val_every` steps and before the first, the quantity the gates are judged on: teacher-forced
KL(dense ‖ gated) over the answer tokens of held-out training examples (not those the greedy warm start
searched on), each prompt running its own layer set at each of `val_budgets` (default 0.6 / 0.7 / 0.8),
all KV groups. The set is the top-k layers by keep-logit at the budget (k = floor(b·L)) with `val-kl`,
and the gates' exact mode (gates.py: the static baselines' count in the prompt's nested ranking, the sets
`l2a eval --methods l2a-exact` runs) with `val-exact`. The best checkpoint so far is kept in
`out/best_policy.safetensors` (+ `best.json`, so a resumed run keeps it) and is the one saved as the
artifact. The held-out examples are training-split
examples the run never trains on, never test data.
Not here: the objective (train.py, losses.py), the decision rules of inference (gates.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .decision import GateDecision

VAL_BUDGETS = (0.6, 0.7, 0.8)


@torch.no_grad()
def topk_decisions(policy, pooled: torch.Tensor, budget: float) -> list[GateDecision]:
    """Per row of pooled prompt states (N, H): keep the floor(budget * L) layers with the highest keep-logits
    at `budget` (protected layers count and always run), all KV groups."""
    c = policy.config
    n = pooled.shape[0]
    logits = policy.gate_logits(policy.features(pooled), torch.tensor([[budget, 1.0]]).expand(n, 2))[0]  # (N, n_gate)
    k = max(0, math.floor(budget * c.n_layers + 1e-9) - c.protected)
    gate = torch.tensor(c.gateable)
    out = []
    for row in logits:
        keep = torch.ones(c.n_layers, dtype=torch.bool)
        keep[gate] = False
        keep[gate[row.topk(k).indices]] = True
        out.append(GateDecision(layers=tuple(keep.tolist())))
    return out


class Selector:
    """Keeps the checkpoint with the lowest held-out KL (see the module docstring)."""

    def __init__(self, m, pairs: list, pad_id: int, out: Path, budgets=VAL_BUDGETS, exact: bool = False):
        from .examples import example_batch

        self.m, self.out, self.budgets, self.exact = m, Path(out), tuple(budgets), exact
        self.ids, self.attn, _, ans = example_batch(pairs, pad_id)  # (N, T) right-padded
        self.mask = ans[:, 1:]  # (N, T-1) answer tokens
        self.dense = torch.log_softmax(m.forward(self.ids, self.attn)[:, :-1].float(), -1)  # (N, T-1, V)
        self.prompts, self.pad_id = [p for p, _ in pairs], pad_id
        meta = self.out / "best.json"
        self.best = json.loads(meta.read_text()) if meta.is_file() else None

    @torch.no_grad()
    def score(self, policy) -> float:
        """Mean over the budgets of teacher-forced KL on the held-out answers, each prompt's own layer set."""
        from .losses import token_kl
        from .examples import pooled_prompts

        pooled = pooled_prompts(self.m, policy, self.prompts, self.pad_id)  # (N, H), as generate computes it
        kls = []
        for b in self.budgets:
            logits = self.m.forward(self.ids, self.attn, decisions=self.decisions(policy, pooled, b))
            kls.append(token_kl(self.dense, logits[:, :-1], self.mask).item())
        self.last = dict(zip(self.budgets, kls))  # per budget, for the log
        return sum(kls) / len(kls)

    def decisions(self, policy, pooled: torch.Tensor, budget: float) -> list[GateDecision]:
        """Each row's layer set at `budget`: its top-k, or the gates' exact mode (all KV groups)."""
        if not self.exact:
            return topk_decisions(policy, pooled, budget)
        from .budget import Budget

        ds = policy.decisions(pooled, [Budget(layers=budget)] * len(pooled), mode="exact")
        return [GateDecision(layers=d.layers) for d in ds]

    def check(self, policy, step: int) -> dict:
        """Score `policy` at `step`; keep it if it is the best so far. Returns the log record."""
        from safetensors.torch import save_file

        kl = self.score(policy)
        if self.best is None or kl < self.best["val_kl"]:
            state = {k: v.detach().contiguous() for k, v in policy.state_dict().items()}
            save_file(state, str(self.out / "best_policy.safetensors"))
            self.best = {"step": step, "val_kl": kl}
            (self.out / "best.json").write_text(json.dumps(self.best) + "\n")
        return {"step": step, "val_kl": kl, "val_kl_at": {str(b): round(v, 4) for b, v in self.last.items()},
                "best_step": self.best["step"], "best_val_kl": self.best["val_kl"]}

    def restore(self, policy) -> dict:
        """Load the best checkpoint's weights into `policy`; returns {step, val_kl}."""
        from safetensors.torch import load_file

        policy.load_state_dict(load_file(str(self.out / "best_policy.safetensors")))
        return dict(self.best)
