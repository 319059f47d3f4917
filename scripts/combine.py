"""Combine result files into one, for `l2a report` to compare lines of several runs side by side.

    python scripts/combine.py OUT IN [IN:SUFFIX ...]

Each IN is a results JSONL (`l2a eval --results`); with `:SUFFIX`, its lines' method names get the suffix
(`greedy-kl` -> `greedy-kl+mc`), so lines that `l2a eval` keys alike (a static method under another
calibration, say) stay apart. A line whose (method, data, budget) is already in OUT's earlier files is left
out (the dense line of each file, mostly). The report counts every method but dense and l2a* as static.
"""

import json
import sys


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, seen, kept = [], set(), 0
    for spec in sys.argv[2:]:
        path, _, suffix = spec.partition(":")
        for raw in open(path):
            line = json.loads(raw) if raw.strip() else None
            if not line or "method" not in line:
                continue
            if suffix and line["method"] not in ("dense",) and not line["method"].startswith("l2a"):
                line["method"] += suffix
            key = (line["method"], line.get("task"), line.get("data"), json.dumps(line["budget"], sort_keys=True))
            if key in seen:
                continue
            seen.add(key)
            out.append(json.dumps(line) + "\n")
            kept += 1
    with open(sys.argv[1], "w") as f:
        f.writelines(out)
    print(f"{kept} lines -> {sys.argv[1]}", file=sys.stderr)


if __name__ == "__main__":
    main()
