"""Every gate recipe against one bar: the best static layer set known, at equal modeled FLOPs.

    python scripts/scoreboard.py [--static FILE[:SUFFIX] ...] [--recipe NAME=FILE ...] [--x seconds] [--out F.jsonl]

Without `--static` / `--recipe` it scores the published records (`STATIC`, `RECIPES`: whole splits, bf16,
all from the 2026-12-06 AMX machine) and the README's table is its output.

`--static` files give the pool of static lines (every method but dense and l2a*; with `:SUFFIX` their
method names get it, as in combine.py, so one method under two calibrations stays two curves) and the
dense lines; the first file's line wins where two files hold the same point. `--recipe` files give one
recipe's learned lines (`l2a`, `l2a-strict`, `l2a-exact`; each mode is its own row); their static lines
are ignored, so every recipe meets the same bar. For each learned point below budget 1, per data file: its
gain over the best static curve (the static points and dense) interpolated at its modeled FLOPs, with the
paired 95% CI over items (`l2a.equalcost.static_at_learned`). Accuracy points for multiple choice, NLL per
token (lower is better; the sign is flipped so a gain is > 0) for gsm8k-loglik. `--x seconds` compares at
equal measured latency instead (`seconds_per_item`: meaningful only where the lines were timed together,
`l2a eval --timing-repeats` or scripts/retime_lines.py). Reads results only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from l2a.equalcost import LEARNED, static_at_learned
from l2a.results import merge, read_results


R = Path(__file__).resolve().parents[1] / "docs" / "results"
STATIC = [f"{R}/paired/greedy/gsm8k.jsonl", f"{R}/paired/greedy/mc_full.jsonl",  # dense, BI, angular, greedy-kl
          f"{R}/dom/mixcal/gsm8k.jsonl:+mc", f"{R}/dom/mixcal/mc_full.jsonl:+mc",  # greedy-kl given the MC pairs
          f"{R}/mcsearch/mixcal128/gsm8k.jsonl:+mc128", f"{R}/mcsearch/mixcal128/mc_full.jsonl:+mc128",
          f"{R}/search/kl64mc128/gsm8k.jsonl:+kl64mc128",
          f"{R}/search/swap16/gsm8k.jsonl", f"{R}/search/swap16/mc_full.jsonl",  # greedy-swap
          f"{R}/search/swap64/gsm8k.jsonl:+64", f"{R}/search/swap64/mc_full.jsonl:+64",
          f"{R}/search/swapmc128/gsm8k.jsonl:+mc128",
          f"{R}/refine/block-swap/gsm8k.jsonl:+mc128", f"{R}/refine/block-swap/mc_full.jsonl:+mc128"]
RECIPES = [f"{name}={R}/{d}/{f}" for name, d in [
    ("shipped", "paired/greedy"), ("mix-mc", "mcmix/s0"), ("mix-mc-request", "mcmix/rq1"),
    ("domains", "dom/s0"), ("domains-lr3e-4", "dom/lr3"),
    ("domains-anchor1", "anchor/a1"), ("domains-anchor1-s1", "anchor/a1s1"),
    ("domains-anchor0.1", "anchor/a0.1"), ("domains-anchor0.1-s1", "anchor/a0.1s1"),
    ("domains-text128", "mcsearch/s0"), ("domains-text128-s1", "mcsearch/s1"), ("pooled", "mcsearch/pool"),
    ("refine0.55", "refine/blk"), ("refine0.55-anchor1", "refine/a1"),
    ("refine0.55+0.7", "nested/a01"), ("refine0.55+0.7-anchor1", "nested/a1"), ("refine0.55+0.7-p64", "nested/p64"),
] for f in ("gsm8k.jsonl", "mc_full.jsonl") if (R / d / f).exists()]


def load_pool(specs: list[str]) -> list[dict]:
    """The static and dense lines of `specs` (`l2a.results.merge`: suffixes, first file wins)."""
    try:
        return [r for r in merge(specs) if r["method"] not in LEARNED]
    except ValueError as e:
        sys.exit(str(e))


def score(pool: list[dict], name: str, path: str, x: str = "flops_per_token") -> list[dict]:
    """One row per (learned mode, data file, budget) of the recipe's file."""
    learned = [r for r in read_results(path) if r.get("method") in LEARNED]
    if not learned:
        sys.exit(f"{path}: no learned (l2a*) lines")
    rows = []
    for mode in LEARNED:
        for data in sorted({Path(r["data"]).stem for r in learned if r["method"] == mode}):
            mine = [r for r in learned if r["method"] == mode and Path(r["data"]).stem == data]
            static = [r for r in pool if Path(r["data"]).stem == data and r.get("task") == mine[0].get("task")]
            if not any(r["method"] == "dense" for r in static):
                continue  # no dense line for this data in the pool: no curve to end at
            y, got = static_at_learned(mine + static, learned=mode, x=x)
            for g in got:
                rows.append({"recipe": name, "mode": mode, "data": data, "metric": y, **g})
    return rows


def _cell(g: dict, with_ci: bool) -> str:
    """The gain (NLL to 3 places, accuracy in points to 1), its CI if asked; bold where the CI excludes 0."""
    if g["gain"] is None:
        return "–"
    pct, f = (1.0, ".3f") if g["metric"] == "nll" else (100.0, ".1f")
    text = f"{pct * g['gain']:+{f}}"
    ci = g.get("ci")
    if ci is not None:
        text += f" [{pct * ci[0]:+{f}}, {pct * ci[1]:+{f}}]" if with_ci else ""
        if ci[0] > 0 or ci[1] < 0:
            text = f"**{text}**"
    return text.replace("-", "−")


def table(rows: list[dict], with_ci: bool = False) -> str:
    """Rows: recipe (mode); columns: data file; cells: the gains at every budget of the table, highest
    first ("·": not measured, "–": no static curve spans the point's cost)."""
    datas = sorted({r["data"] for r in rows}, key=lambda d: (d != "test", d))  # GSM8K's `test` first
    budgets = sorted({r["budget"] for r in rows}, reverse=True)
    recipes = list(dict.fromkeys((r["recipe"], r["mode"]) for r in rows))
    out = ["| recipe | " + " | ".join(datas) + " |", "|---|" + "---|" * len(datas)]
    for name, mode in recipes:
        cells = []
        for d in datas:
            got = {r["budget"]: r for r in rows if (r["recipe"], r["mode"], r["data"]) == (name, mode, d)}
            cells.append(" / ".join(_cell(got[b], with_ci) if b in got else "·" for b in budgets) if got else "·")
        out.append(f"| {name} ({mode}) | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--static", nargs="+", default=STATIC, metavar="FILE[:SUFFIX]")
    p.add_argument("--recipe", nargs="+", default=RECIPES, metavar="NAME=FILE")
    p.add_argument("--ci", action="store_true", help="print each gain's paired 95%% CI too")
    p.add_argument("--x", choices=("flops", "seconds"), default="flops",
                   help="equal modeled FLOPs per token (default) or equal measured seconds per item")
    p.add_argument("--out", help="also write one JSON line per comparison here")
    args = p.parse_args(argv)
    if any("=" not in spec for spec in args.recipe):
        p.error("--recipe takes NAME=FILE")
    pool = load_pool(args.static)
    x = {"flops": "flops_per_token", "seconds": "seconds_per_item"}[args.x]
    rows = [row for spec in args.recipe for row in score(pool, *spec.split("=", 1), x=x)]
    print(table(rows, args.ci))
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
