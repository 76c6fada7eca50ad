"""Short, deterministic error text for one-line reports (error logs, skipped benchmark cases)."""

from __future__ import annotations

import re

# "<object at 0x7f3a...>": an address differs from run to run, so a log holding one never compares equal.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{8,}")


def without_addresses(text: str) -> str:
    """``text`` with memory addresses removed (`` at 0x...``) or masked (``0x...``)."""
    return _ADDRESS.sub(lambda m: "" if m.group(0).startswith(" at ") else "0x…", text)


def short_error(exc: BaseException, limit: int = 300, with_type: bool = True) -> str:
    """The first line of ``exc``'s message (``Type: message`` with ``with_type``), at most ``limit``
    characters; the type name alone when the message is empty."""
    lines = without_addresses(str(exc)).strip().splitlines()
    text = lines[0] if lines else ""
    if with_type:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return (text or type(exc).__name__)[:limit]
