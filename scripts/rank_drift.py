"""How far training moved each prompt's layer ranking from where it started, per source.

    python scripts/rank_drift.py REF GATES [GATES ...] [--n 48] [--budgets 0.85,0.55] [--data ../shared/data]

REF is the warm start the runs began from (an artifact trained 1 step at lr 1e-9 with the same warm-start
options and seed). For the first `--n` GSM8K test prompts and ARC-Easy questions, the mean squared
difference of the row-z-scored layer logits (losses.rank_anchor, what `l2a train --anchor` penalises):
0 = the same ranking, 2 = uncorrelated. Shifts and sharpening with the budget count nothing. Embedded
default, bf16. One JSON line per (gates, source, budget) on stdout; ~1 min on 2 cores.
"""

import argparse
import json
import os


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ref")
    ap.add_argument("gates", nargs="+")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--budgets", default="0.85,0.55")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    args = ap.parse_args()

    import torch

    import l2a
    from l2a import data
    from l2a.checkpoint import load_gates
    from l2a.losses import rank_anchor
    from l2a.tasks import MultipleChoice, math_prompt
    from l2a.examples import pooled_prompts

    m = l2a.load("smollm2-135m", dtype="bfloat16")
    tok, pad = m.tokenizer, m.tokenizer.pad_token_id
    prompts = {"gsm8k": [math_prompt(tok, r["question"]) for r in data.load("math", f"{args.data}/gsm8k/test.jsonl")[0][: args.n]],
               "arc_easy": [MultipleChoice.pair(tok, r)[0] for r in data.load("mc", f"{args.data}/mc/arc_easy.jsonl")[0][: args.n]]}
    ref = load_gates(args.ref, m.hf)
    for g in args.gates:
        p = load_gates(g, m.hf)
        for source, pr in prompts.items():
            pooled = pooled_prompts(m, p, pr, pad)  # (n, H): the router input is the base model's, same for both
            for b in map(float, args.budgets.split(",")):
                bt = torch.tensor([[b, 1.0, 1.0]]).expand(len(pr), 3)
                with torch.no_grad():
                    drift = rank_anchor(p(pooled, bt).layers, ref(pooled, bt).layers).item()
                print(json.dumps({"gates": g, "ref": args.ref, "source": source, "budget": b, "n": len(pr),
                                  "rank_drift": round(drift, 3)}))


if __name__ == "__main__":
    main()
