"""``python -m xcodec_fast.tokenize`` (and ``torchrun ... -m xcodec_fast.tokenize``)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
