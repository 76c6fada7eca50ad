"""Keep freed CPU heap memory for reuse (glibc malloc), so that large tensors stop paying page faults.

Why: glibc serves every block above its mmap threshold (32 MB at most) with freshly mapped pages and
unmaps them again on free, so each such tensor pays one page fault per 4 KiB page on first write.
The codec's activations are that large (64 channels × 160000 frames is 41 MB for 10 s), and on the
project's 2-core Xeon VM allocating and filling one took 11.3 ms against 1.1 ms for filling it again
(ad hoc timing);
the end-to-end effect is in the README's performance section (benchmark rows per malloc mode).

:func:`reuse_freed_memory` switches glibc to serve large blocks from its heap and never to trim it,
so freed pages stay mapped and the next tensor reuses them. The cost: the process keeps its peak
heap (resident memory does not shrink after a large batch). It is process-wide, so the library
never does it on import; the command line does it for CPU runs unless ``XCODEC_FAST_CPU_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV = "XCODEC_FAST_CPU_MALLOC"
# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_mode = "default"


def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None, f"needs glibc malloc (this is {platform.system()} {platform.libc_ver()[0] or 'without glibc'})"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError) as exc:
        return None, f"glibc's mallopt is not reachable: {exc}"
    return libc, ""


def reuse_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory mapped (see the module doc).

    Returns whether the setting is in effect; idempotent. Never raises: where it cannot apply
    (not glibc) :func:`mode` says why.
    """
    global _mode
    if _mode == "reuse":
        return True
    libc, reason = _libc()
    if libc is None:
        _mode = f"default ({reason})"
        return False
    # M_MMAP_MAX = 0: no block comes from mmap; M_TRIM_THRESHOLD = INT_MAX: the heap top is kept.
    if libc.mallopt(_M_MMAP_MAX, 0) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) != 1:
        _mode = "default (mallopt refused the setting)"
        return False
    _mode = "reuse"
    return True


def mode() -> str:
    """'reuse' once :func:`reuse_freed_memory` took effect, else 'default' (with the reason, if it failed)."""
    return _mode


def apply_from_environment() -> str:
    """What the command line calls before running a model on CPU: reuse unless the environment
    variable says ``default``. Returns :func:`mode`. An unknown value is an error that names it."""
    choice = os.environ.get(ENV, "reuse").strip().lower()
    if choice not in ("reuse", "default"):
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected 'reuse' or 'default'")
    if choice == "reuse":
        reuse_freed_memory()
    return mode()
