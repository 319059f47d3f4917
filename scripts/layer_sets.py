"""Which layers does a gate artifact skip, on which data, and how much do its decisions vary by input?

    python scripts/layer_sets.py [GATES_DIR] [--n 200] [--budgets 0.85,0.7] [--data ../shared/data] [--sets gsm8k,arc_easy,piqa,winogrande]
        [--mode threshold|exact]

For each set (the first `--n` GSM8K test prompts, or MC items routed on what `l2a eval` routes on: the
question, or WinoGrande's shared sentence start) and layer budget (threshold mode, or `--mode exact`:
`l2a-exact`'s decisions): the mean realized layer fraction, the number of distinct layer sets, the share of
prompts on the most common set and that set, and how often each layer is skipped; then the static sets of block-influence and angular at the same
budgets. Without GATES_DIR, the shipped gates. One JSON line per (set, budget) on stdout; ~1 min, bf16.
"""

import argparse
import json
import os
from collections import Counter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gates", nargs="?")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--budgets", default="0.85,0.7")
    ap.add_argument("--sets", default="gsm8k,arc_easy,piqa,winogrande")
    ap.add_argument("--mode", default="threshold", choices=("threshold", "exact"))
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    args = ap.parse_args()

    import torch

    import l2a
    from l2a import data
    from l2a.baselines import make_method
    from l2a.budget import Budget
    from l2a.scoring import left_pad
    from l2a.tasks import MultipleChoice, math_prompt

    torch.set_num_threads(2)
    m = l2a.load("smollm2-135m", dtype="bfloat16", gates=args.gates)
    tok, pad = m.tokenizer, m.tokenizer.pad_token_id
    sets = {}
    for name in args.sets.split(","):
        if name == "gsm8k":
            rows = data.load("math", os.path.join(args.data, "gsm8k", "test.jsonl"))[0][: args.n]
            sets[name] = [math_prompt(tok, r["question"]) for r in rows]
            continue
        rows = data.load("mc", os.path.join(args.data, "mc", f"{name}.jsonl"))[0][: args.n]
        sets[name] = [MultipleChoice.pair(tok, r)[0] for r in rows]
    budgets = [float(b) for b in args.budgets.split(",")]
    skipped = lambda d: tuple(i for i, keep in enumerate(d.layers) if not keep)  # noqa: E731
    for name, prompts in sets.items():
        for b in budgets:
            ds = []
            for i in range(0, len(prompts), 16):
                ids, mask = left_pad(prompts[i : i + 16], pad)
                ds += m.decide(ids, Budget(layers=b), attention_mask=mask, mode=args.mode)
            sets_ = Counter(skipped(d) for d in ds)
            layer = Counter(i for d in ds for i in skipped(d))
            modal, count = sets_.most_common(1)[0]
            print(json.dumps({"data": name, "budget": b, "n": len(ds), "realized_layers": round(sum(d.layer_fraction for d in ds) / len(ds), 3),
                              "layer_sets": len(sets_), "modal_set_share": round(count / len(ds), 3), "modal_skipped": list(modal),
                              "skip_rate": {i: round(c / len(ds), 2) for i, c in sorted(layer.items())}}))
    ids, mask = left_pad(list(sets.values())[0][:1], pad)
    for method in ("block-influence", "angular"):
        policy = make_method(method)
        policy.prepare(m)
        print(json.dumps({"method": method, "skipped": {b: list(skipped(policy.decide(m, ids, mask, [Budget(layers=b)])[0])) for b in budgets}}))


if __name__ == "__main__":
    main()
