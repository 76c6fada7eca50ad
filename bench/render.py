#!/usr/bin/env python
"""Regenerate README.md's performance section from bench/results/*.json.

Writes between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` (and the long-audio results
between ``<!-- long:start -->`` and ``<!-- long:end -->``) and nowhere else. Without the
markers it prints the section instead. ``--check`` exits 1 when the README is out of date (for CI).
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, even when not installed

from xcodec_fast.benchmark import report  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the README section differs")
    parser.add_argument("--print", dest="print_only", action="store_true", help="print the section, write nothing")
    args = parser.parse_args(argv)

    section = report.readme_section(report.load_results(args.results_dir))
    text = args.readme.read_text() if args.readme.exists() else ""
    has_markers = report.START in text and report.END in text
    if args.print_only or not has_markers:
        if not has_markers and not args.print_only:
            print(f"{args.readme}: no {report.START} / {report.END} markers; the section would be:\n", file=sys.stderr)
        print(section)
        return 1 if args.check else 0
    if args.check:
        current = text.split(report.START, 1)[1].split(report.END, 1)[0].strip()
        if current != section.strip():
            print(f"{args.readme} is out of date: run python bench/render.py", file=sys.stderr)
            return 1
        return 0
    written, _ = report.render_readme(args.readme, args.results_dir)
    long_written = report.render_long(args.readme, args.results_dir)
    print(f"{'updated' if written or long_written else 'left unchanged'} {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
