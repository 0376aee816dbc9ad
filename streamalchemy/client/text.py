"""Text is data: what a user reads shows control characters escaped, never obeyed.

Light on purpose (no rich): the CLI prints log lines with it too.
"""

from __future__ import annotations


def plain(text: object) -> str:
    """``text`` as a string with control characters escaped (``\\x1b``, ``\\n``), else as it is."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
