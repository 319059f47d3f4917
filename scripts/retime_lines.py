"""Time the finished lines of one data file in several results files together, so their latencies compare.

    python scripts/retime_lines.py --model SPEC --task mc --data FILE [--items 40 --repeats 3] \
        RESULTS[:GATES_DIR] [RESULTS[:GATES_DIR] ...]

`l2a eval --timing-repeats` times the points of one results file, built under that run's calibration and
gates. Lines written under other calibrations (greedy-kl searched on more data) or by other gates (a trained
and an untrained artifact) sit in other files; this times the lines of `--data` (the path as the lines name
it) in every RESULTS file in one interleaved run (`l2a.retime.retime_results`: round-robin, rotated, median
per point), a static line under the calibration it records, an l2a line with its file's GATES_DIR (refused
unless their digest is the line's). Only the timing fields of the files change; `l2a report` and
`scripts/scoreboard.py --x seconds` then compare the lines at equal measured latency. One JSON record (the
median seconds per item of each point) is printed last.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--data", required=True, help="the data file, as the lines name it")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("files", nargs="+", metavar="RESULTS[:GATES_DIR]")
    args = ap.parse_args(argv)

    import torch

    from l2a.checkpoint import load_gates
    from l2a.loading import load
    from l2a.retime import retime_results
    from l2a.tasks import get_task

    torch.set_num_threads(2)
    try:
        task = get_task(args.task)
        model = load(args.model, dtype=args.dtype)
        files = [(path, load_gates(gates, model.hf) if gates else None)
                 for path, gates in ((f.split(":", 1) + [""])[:2] for f in args.files)]
        timed = retime_results(model, task, args.data, files, args.repeats, args.items)
    except (ValueError, FileNotFoundError) as e:
        print(f"retime_lines: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"task": args.task, "data": args.data, "items": args.items, "repeats": args.repeats,
                      "dtype": args.dtype, "seconds_per_item": {k: round(v, 4) for k, v in timed.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
