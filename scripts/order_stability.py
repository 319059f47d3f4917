"""How much do two searched warm starts agree? (seed-to-seed noise of the greedy-KL search)

    python scripts/order_stability.py A B [--layers 30] [--budgets 0.85,0.7,0.55]

A and B are gate directories (or their `warm_start.json` files) of two `l2a train --warm-start greedy-kl`
runs. For each searched order (`order`: the task's; `second_order`: the second source's, with
`--warm-domains`) and budget, prints the Jaccard overlap of the layer sets the two orders remove at that
budget (the first L - kept_count(L, b) of each order, as the static baselines count): 1.0 = the same set.
"""

import argparse
import json
from pathlib import Path

from l2a.baselines import kept_count


def removed(order: list[int], layers: int, budget: float) -> set[int]:
    return set(order[: layers - kept_count(layers, budget)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--layers", type=int, default=30, help="decoder layers of the model (SmolLM2-135M: 30)")
    ap.add_argument("--budgets", default="0.85,0.7,0.55")
    args = ap.parse_args()
    read = lambda p: json.loads((Path(p) / "warm_start.json" if Path(p).is_dir() else Path(p)).read_text())  # noqa: E731
    a, b = read(args.a), read(args.b)
    for key in ("order", "second_order"):
        if key in a and key in b:
            cells = {}
            for bud in map(float, args.budgets.split(",")):
                x, y = removed(a[key], args.layers, bud), removed(b[key], args.layers, bud)
                cells[bud] = round(len(x & y) / max(1, len(x | y)), 2)
            print(json.dumps({"order": key, "jaccard_of_removed": cells}))


if __name__ == "__main__":
    main()
