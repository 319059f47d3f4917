"""Combine result files into one, for `l2a report` to compare lines of several runs side by side.

    python scripts/combine.py OUT IN [IN:SUFFIX ...]

Each IN is a results JSONL (`l2a eval --results`); with `:SUFFIX`, its lines' method names get the suffix
(`greedy-kl` -> `greedy-kl+mc`), so lines that `l2a eval` keys alike (a static method under another
calibration, say) stay apart. A line whose (method, data, budget) is already in OUT's earlier files is left
out (the dense line of each file, mostly; `l2a.results.merge`). The report counts every method but dense
and l2a* as static.
"""

import json
import sys

from l2a.results import merge


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    try:
        lines = merge(sys.argv[2:])
    except ValueError as e:
        sys.exit(str(e))
    with open(sys.argv[1], "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)
    print(f"{len(lines)} lines -> {sys.argv[1]}", file=sys.stderr)


if __name__ == "__main__":
    main()
