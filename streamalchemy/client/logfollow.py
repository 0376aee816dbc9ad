"""Follow log files as ``tail -F`` does: new lines as they come, across rotation.

Used by ``logs --follow`` on the CLI side only; reads, never writes.
"""

from __future__ import annotations

import os
from typing import IO


class Follower:
    """One followed file: starts at its end, reopens it when it is rotated or truncated."""

    def __init__(self, path: str, offset: int | None = None) -> None:
        """``offset``: where the lines already shown end (the daemon's ``logs`` says)."""
        self.path = path
        self._offset = offset
        self._handle: IO[str] | None = None
        self._inode: int | None = None
        self._partial = ""
        # A file there now starts at its end (its tail was printed already); one that
        # appears later is read from its start.
        self._fresh = os.path.exists(path)

    def read(self) -> str:
        """What was appended since the last call ("" when nothing)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ""
        text = ""
        handle = self._handle
        if handle is None or st.st_ino != self._inode or st.st_size < handle.tell():
            if handle is not None:
                text = handle.read()  # the rest of the rotated file
                handle.close()
            handle = self._handle = open(self.path, errors="replace")  # noqa: SIM115
            self._inode = st.st_ino
            if self._fresh and self._offset is not None and self._offset <= st.st_size:
                # Lines written between the tail the daemon sent and now are not lost.
                handle.seek(self._offset)
            elif self._fresh:
                handle.seek(0, os.SEEK_END)
            self._fresh = False
        return text + handle.read()

    def read_lines(self) -> list[str]:
        """Whole lines appended since the last call; a partial last line waits for its end."""
        text = self._partial + self.read()
        lines = text.split("\n")
        self._partial = lines.pop()
        return lines

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
