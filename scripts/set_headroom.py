"""How much can choosing the layer set per prompt gain over the best static set? GSM8K, from recorded points.

    python scripts/set_headroom.py [RESULTS.jsonl ...] [--router] [--folds 5]

Reads the per-item NLLs that `l2a eval --task gsm8k-loglik` records (`item_nll`, `item_tokens`) for every
static method's point at each layer budget (default: every gsm8k.jsonl under docs/results; one entry per
distinct set, told apart by its NLL), and prints per budget, in NLL per answer token:

- `best`: the best static set's NLL (one set for every prompt);
- `oracle_K`: each item scored by whichever of the K best sets does best on it: a ceiling that reads the
  test answers, for any router choosing among those sets;
- with `--router`: a router that reads only the prompt, cross-validated on the test items themselves:
  ridge regression from the prompt's router input (the embedded default's hidden state after layer 0,
  pooled over the prompt as the gates pool it) to the difference of the two best sets' item NLLs, each
  item sent to the set it predicts lower (ridge penalty 10 per item, fixed, not tuned). Fit on the other
  folds, scored on its own, with a 95% paired-bootstrap interval of its difference to the best set; an
  estimate of what a learned choice between those two sets could reach, not a method's result (it is fit
  on test items).

One JSON line per budget on stdout. Needs torch only with --router (~4 min on 1 core beside a training run).
"""

import argparse
import glob
import json
import os

ROOT = os.path.join(os.path.dirname(__file__), "..")


def static_sets(paths: list[str]) -> dict[float, list[dict]]:
    """{layer budget: [{method, file, nll, item_nll, item_tokens}] best first}, one entry per distinct set."""
    out: dict[float, dict] = {}
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            b = r["budget"]["layers"] if isinstance(r["budget"], dict) else r["budget"]
            if "item_nll" not in r or r["method"] == "dense" or r["method"].startswith("l2a") or b >= 1:
                continue
            if r.get("seeds", 1) > 1 or r.get("layer_sets", 1) > 1:
                continue  # averaged over seeds (random) or one set per prompt: not one set
            key = (r["n"], round(r["nll"], 6))
            out.setdefault((b, r["n"]), {}).setdefault(key, {"method": r["method"], "file": os.path.relpath(path, ROOT),
                                                             "nll": r["nll"], "item_nll": r["item_nll"],
                                                             "item_tokens": r["item_tokens"], "data": r["data"]})
    return {k: sorted(v.values(), key=lambda s: s["nll"]) for k, v in out.items()}


def per_token(item_nll: list[float], tokens: list[int]) -> float:
    return sum(item_nll) / sum(tokens)


def router_choice(sets: list[dict], folds: int) -> tuple[float, float]:
    """Cross-validated choice between sets[0] and sets[1] from the prompts' router inputs: (NLL per token,
    share of items sent to the second set, 95% paired-bootstrap interval of its difference to sets[0])."""
    import torch

    import l2a
    from l2a import data
    from l2a.gates import GateConfig, GatePolicy
    from l2a.tasks import math_prompt
    from l2a.examples import pooled_prompts

    rows = data.load("math", sets[0]["data"])[0][: len(sets[0]["item_nll"])]
    m = l2a.load("smollm2-135m", dtype="bfloat16", gates=False)
    tok, pad = m.tokenizer, m.tokenizer.pad_token_id
    router = GatePolicy(GateConfig(n_layers=m.geometry.n_layers, n_groups=m.geometry.n_kv, hidden=m.hf.config.hidden_size))
    x = pooled_prompts(m, router, [math_prompt(tok, r["question"]) for r in rows], pad).float()  # (N, H) as the gates read it
    a, b = (torch.tensor(s["item_nll"]) for s in sets[:2])
    tokens = torch.tensor(sets[0]["item_tokens"], dtype=torch.float)
    y = (a - b) / tokens  # (N,) per-token gain of the second set
    fold = torch.arange(len(y)) % folds
    pick = torch.zeros(len(y), dtype=torch.bool)
    for f in range(folds):
        tr, te = fold != f, fold == f
        mu, sd = x[tr].mean(0), x[tr].std(0).clamp_min(1e-6)
        xt = torch.cat([(x[tr] - mu) / sd, torch.ones(int(tr.sum()), 1)], 1)  # (n, H+1)
        w = torch.linalg.solve(xt.T @ xt + 10.0 * len(xt) * torch.eye(xt.shape[1]), xt.T @ y[tr])  # ridge
        pick[te] = (torch.cat([(x[te] - mu) / sd, torch.ones(int(te.sum()), 1)], 1) @ w) > 0
    routed = torch.where(pick, b, a)
    d = routed - a  # (N,) per item against the best set
    idx = torch.randint(len(d), (2000, len(d)), generator=torch.Generator().manual_seed(0))  # paired bootstrap
    boot = (d[idx].sum(-1) / tokens[idx].sum(-1)).sort().values
    ci = (float(boot[49]), float(boot[1949]))  # 95%
    return float(routed.sum() / tokens.sum()), float(pick.float().mean()), ci


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="*", help="l2a eval results files (default: docs/results/**/gsm8k.jsonl)")
    ap.add_argument("--router", action="store_true", help="also a cross-validated router between the two best sets")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    paths = args.results or sorted(glob.glob(os.path.join(ROOT, "docs", "results", "**", "gsm8k.jsonl"), recursive=True))
    for (budget, n), sets in sorted(static_sets(paths).items(), reverse=True):
        tokens = sets[0]["item_tokens"]
        rec = {"budget": budget, "n": n, "sets": len(sets), "best": round(sets[0]["nll"], 4),
               "best_method": f"{sets[0]['method']} ({sets[0]['file']})"}
        for k in sorted({2, 3, len(sets)}):
            if k <= len(sets):
                oracle = [min(s["item_nll"][i] for s in sets[:k]) for i in range(len(tokens))]
                rec[f"oracle_{k}"] = round(per_token(oracle, tokens), 4)
        if args.router and len(sets) > 1:
            nll, share, ci = router_choice(sets, args.folds)
            rec.update(router_cv=round(nll, 4), router_gain_ci95=[round(ci[0], 4), round(ci[1], 4)],
                       router_second_share=round(share, 3),
                       second_method=f"{sets[1]['method']} ({sets[1]['file']})", second=round(sets[1]["nll"], 4))
        print(json.dumps(rec))


if __name__ == "__main__":
    main()
