"""Does a gate artifact's realized layer fraction follow the request on text it was not calibrated on?

    python scripts/calib_domains.py GATES_DIR [--n 200] [--data ../shared/data] [--out runs/calib_domains.json]

Mean realized layer fraction (threshold mode) at layer budgets 0.85 / 0.7 / 0.55 on the first `--n`
prompts of GSM8K test, ARC-Easy, PIQA and WinoGrande (routed on what `l2a eval` routes on: the question,
or WinoGrande's shared sentence start) and on 48 held-out prose windows (prose.py's seeded order, after
the warm-start search's and before training's), under three calibration tables: the artifact's own (fit
on its run's held-out GSM8K prompts), one refit on those prompts plus as many prose windows, and one
refit on prose alone. The gate weights are never touched; nothing is written but `--out`. ~1 min, bf16.
"""

import argparse
import json
import os

BUDGETS = (0.85, 0.7, 0.55)
MC_SETS = ("arc_easy", "piqa", "winogrande")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gates")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    import l2a
    from l2a import data
    from l2a.calibration import calibrate, realized_layers
    from l2a.checkpoint import read_config
    from l2a.prose import docstrings, windows
    from l2a.tasks import MultipleChoice, math_prompt
    from l2a.mix import HELD as PROSE_HELD
    from l2a.examples import example_order, math_examples
    from l2a.train import TrainConfig

    torch.set_num_threads(2)
    m = l2a.load("smollm2-135m", dtype="bfloat16", gates=args.gates)
    tok, policy, pad = m.tokenizer, m.policy, m.tokenizer.pad_token_id
    rows = data.load("math", os.path.join(args.data, "gsm8k", "test.jsonl"))[0][: args.n]
    sets = {"gsm8k": [math_prompt(tok, r["question"]) for r in rows]}
    for name in MC_SETS:
        rows = data.load("mc", os.path.join(args.data, "mc", f"{name}.jsonl"))[0][: args.n]
        sets[name] = [MultipleChoice.pair(tok, r)[0] for r in rows]
    cfg = TrainConfig(**{**read_config(args.gates)["training"]["config"], "out": args.gates})
    examples, _ = math_examples(cfg, tok)
    gsm_held = [examples[i][0] for i in example_order(cfg, len(examples))[: cfg.calib_prompts]]
    sets["prose_held"] = [p for p, _ in windows(tok, docstrings(), PROSE_HELD, cfg.seed)[cfg.warm_text :]]

    def table() -> dict:
        return {k: [round(sum(realized_layers(m, policy, v, pad, b)) / len(v), 3) for b in BUDGETS] for k, v in sets.items()}

    out = {"gates": args.gates, "budgets": BUDGETS, "n": args.n, "own": table()}
    prose = sets["prose_held"]
    for tag, prompts in (("gsm8k+prose", gsm_held + prose[: len(gsm_held)]), ("prose", prose)):
        policy.config.calibration = calibrate(m, policy, prompts, pad)
        out[tag] = table()
    print(json.dumps(out))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
