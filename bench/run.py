#!/usr/bin/env python
"""Run the benchmark suite: ``python bench/run.py --quick`` (same as ``xcodec-fast bench --quick``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, even when not installed

from xcodec_fast.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
