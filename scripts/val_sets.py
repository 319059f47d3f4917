"""The held-out check `l2a train --select val-exact` logs, for one saved policy, with each budget's sets.

    python scripts/val_sets.py RUN_DIR [--policy FILE | --gates DIR] [--budgets 0.85,0.7,0.55]

RUN_DIR is a training output directory (its train_state.json gives the config, hence the same 32 held-out
training chains training checks on). The policy scored is the run's last saved state
(train_state.safetensors), `--policy` a policy state file (e.g. RUN_DIR/best_policy.safetensors), or
`--gates` a gate artifact (calibrated, as `l2a eval` loads it). Prints one JSON line: the mean and each
budget's teacher-forced KL of the exact-mode sets, and each budget's three commonest sets (skipped layers,
prompts on it). Embedded default's dtype from the run's config; ~1 min on one core.
"""

import argparse
import collections
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--policy", help="a policy state file (safetensors) instead of the run's last state")
    ap.add_argument("--gates", help="a gate artifact directory instead of the run's last state")
    ap.add_argument("--budgets", help="comma-separated layer budgets (default: the run's val_budgets)")
    args = ap.parse_args()

    from safetensors.torch import load_file

    import l2a
    from l2a.checkpoint import load_gates
    from l2a.gates import GatePolicy
    from l2a.selection import Selector
    from l2a.examples import example_order, math_examples, pooled_prompts
    from l2a.train import VAL_PAIRS, TrainConfig, gate_config

    meta = json.load(open(f"{args.run}/train_state.json"))
    names = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in meta["config"].items() if k in names})
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else cfg.val_budgets
    m = l2a.load(cfg.model, dtype=cfg.dtype, gates=False)
    pad = m.tokenizer.pad_token_id
    examples, _ = math_examples(cfg, m.tokenizer)
    order, w = example_order(cfg, len(examples)), cfg.warm_pairs
    val = [examples[i] for i in order[len(order) - w - VAL_PAIRS : len(order) - w]]  # as train() holds them out
    if args.gates:
        policy, scored = load_gates(args.gates, m.hf), args.gates
    else:
        policy, scored = GatePolicy(gate_config(m, cfg)), args.policy or f"step {meta['step']}"
        state = load_file(args.policy or f"{args.run}/train_state.safetensors")
        policy.load_state_dict({k.removeprefix("policy."): v for k, v in state.items()
                                if args.policy or k.startswith("policy.")})
    sel = Selector(m, val, pad, args.run, budgets, exact=True)
    kl = sel.score(policy)
    pooled = pooled_prompts(m, policy, [p for p, _ in val], pad)  # (N, H)
    sets = {}
    for b in budgets:
        count = collections.Counter(tuple(i for i, keep in enumerate(d.layers) if not keep)
                                    for d in sel.decisions(policy, pooled, b))
        sets[str(b)] = [[list(s), n] for s, n in count.most_common(3)]
    print(json.dumps({"run": args.run, "policy": scored, "val_kl": round(kl, 4),
                      "val_kl_at": {str(b): round(v, 4) for b, v in sel.last.items()}, "sets": sets}))


if __name__ == "__main__":
    main()
