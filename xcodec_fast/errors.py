"""Short, deterministic error text for one-line reports (error logs, skipped benchmark cases)."""

from __future__ import annotations


def short_error(exc: BaseException, limit: int = 300, with_type: bool = True) -> str:
    """The first line of ``exc``'s message (``Type: message`` with ``with_type``), at most ``limit``
    characters; the type name alone when the message is empty."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if with_type:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return (text or type(exc).__name__)[:limit]
