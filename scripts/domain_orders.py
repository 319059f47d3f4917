"""Do different kinds of text need different layers? (the input-aware headroom across domains)

    python scripts/domain_orders.py [--out runs/domain_orders.json]     # ~12 min on 2 cores, bf16

Three domains: GSM8K train chains of thought (chat prompt -> solution), English prose (the docstrings of
Python's standard library) and Python code (its source files); both text domains are split into windows
of 48 prompt + 112 answer tokens. A greedy-KL layer order (swap.greedy_kl_order, 12 removals on 16
windows) is searched on each text domain; the GSM8K order is the shipped gates' warm start. Every order's
top-21 and top-16 sets are then scored by teacher-forced KL(dense ‖ pruned) on 48 other examples of every
domain. If each domain's own order were clearly best on it, a router reading the prompt could gain by
telling domains apart; the matrix shows how much.
"""

import argparse
import json
import os
import re

from l2a.prose import ANSWER as A
from l2a.prose import docstrings, source_files, windows


def main() -> None:
    import torch

    import l2a
    from l2a.checkpoint import read_config
    from l2a.data import load_math
    from l2a.decision import GateDecision
    from l2a.gatecheck import chain_kl
    from l2a.swap import greedy_kl_order
    from l2a.tasks import math_prompt

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/domain_orders.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    m = l2a.load("smollm2-135m", dtype="bfloat16")
    tok, L = m.tokenizer, m.n_layers
    rows, _ = load_math(None, split="train")
    gsm = [(math_prompt(tok, r["question"]), tok(re.sub(r"<<[^>]*>>", "", r["answer"]), add_special_tokens=False)["input_ids"][:A])
           for r in rows[:400]]
    domains = {"gsm8k": gsm, "docs": windows(tok, docstrings(), 400, 1), "code": windows(tok, source_files(), 400, 2)}
    orders = {"gsm8k": read_config(m.gates_path)["training"]["warm_start_order"]}
    for name in ("docs", "code"):
        orders[name] = greedy_kl_order(m, domains[name][-16:], list(range(1, L - 1)), 12, pad_id=tok.pad_token_id or 0)
    res = {"orders": orders, "kl": {}}
    for keep in (21, 16):
        for data, pairs in domains.items():
            for name, order in orders.items():
                sums, n = chain_kl(m, pairs[:48], [GateDecision.dropping(L, set(order[: L - keep]))] * 48)
                res["kl"][f"{keep} layers | {data} data | {name} order"] = round(float(sums.sum() / n.sum()), 4)
                print(keep, data, name, res["kl"][f"{keep} layers | {data} data | {name} order"], flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
