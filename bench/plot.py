#!/usr/bin/env python
"""Redraw the PNG plots (kernel speedups, roofline, end-to-end) from stored result JSON files."""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, even when not installed

from xcodec_fast.benchmark.plots import plot_result  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="*", type=Path, help="result JSON files (default: bench/results/*.json)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args(argv)
    paths = args.results or sorted((ROOT / "bench" / "results").glob("*.json"))
    if not paths:
        print("no result files: run python bench/run.py first", file=sys.stderr)
        return 1
    for path in paths:
        for written in plot_result(json.loads(path.read_text()), args.out):
            print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
