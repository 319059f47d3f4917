"""Teacher-forced KL to dense of fixed layer sets, per data set: which layers are cheap depends on the text.

    python scripts/set_kl.py [--drop 4,5,7,25 --drop 12,13,14,15 ...] [--n 48] [--data ../shared/data]

For each data set: GSM8K train (chat prompt -> worked answer, the last 32 items), the MC sets (question ->
correct choice, or WinoGrande's sentence start -> its rest: the last `--n` items of each file) and 32
windows of generic prose (prose.py), the mean KL(dense || skipped) per answer token with each `--drop` set
of layers skipped. Embedded default, bf16. One JSON line per set on stdout; ~3 min on 2 cores.
"""

import argparse
import json
import os

MC = ("arc_easy", "piqa", "winogrande", "commonsenseqa", "siqa", "boolq", "mmlu_redux")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--drop", action="append", help="comma-separated layer indices skipped together (repeatable)")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    args = ap.parse_args()

    import torch

    import l2a
    from l2a import data
    from l2a.decision import GateDecision
    from l2a.losses import logits_keep, position_kl
    from l2a.prose import docstrings, windows
    from l2a.tasks import MultipleChoice, math_prompt
    from l2a.examples import example_batch

    torch.set_num_threads(2)
    drops = [[int(i) for i in d.split(",")] for d in (args.drop or ["4,5,25", "4,5,7,25", "12,13,14,15", "3,12,25,26", "3,5,17,25"])]
    m = l2a.load("smollm2-135m", dtype="bfloat16")
    tok, pad = m.tokenizer, m.tokenizer.pad_token_id
    gsm = data.load("math", os.path.join(args.data, "gsm8k", "train.jsonl"))[0][-32:]
    sets = {"gsm8k": [(math_prompt(tok, r["question"]), tok(r["answer"], add_special_tokens=False)["input_ids"][:100]) for r in gsm]}
    for name in MC:
        rows = data.load("mc", os.path.join(args.data, "mc", f"{name}.jsonl"))[0][-args.n :]
        sets[name] = [MultipleChoice.pair(tok, r) for r in rows]
    sets["prose"] = windows(tok, docstrings(), 32, 0)
    kl = {}
    with torch.no_grad():
        for name, pairs in sets.items():
            ids, attn, _, ans = example_batch(pairs, pad)
            keep = logits_keep(ans[:, 1:])  # positions predicting an answer token
            dense = torch.log_softmax(m.forward(ids, attn, logits_to_keep=keep).float(), -1)
            for d in drops:
                logits = m.forward(ids, attn, decisions=[GateDecision.dropping(m.n_layers, d)] * len(pairs), logits_to_keep=keep)
                kl[name, tuple(d)] = position_kl(dense, torch.log_softmax(logits.float(), -1), dense.exp()).mean().item()
    for d in drops:
        print(json.dumps({"dropped": d, "kl": {name: round(kl[name, tuple(d)], 3) for name in sets}}))


if __name__ == "__main__":
    main()
