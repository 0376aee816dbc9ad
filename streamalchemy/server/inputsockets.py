"""Hand FFmpeg a secret URL source through a private Unix socket, never its command line.

Any user reads any process's command line (``ps``, ``/proc/PID/cmdline``). For a
URL source that holds a secret (or a resolved ``${NAME}``), FFmpeg gets
``-f concat -i unix:SOCKET`` instead, and the daemon answers each connection on
that socket (one per FFmpeg spawn, restarts included) with the ffconcat script
naming the URL. The socket is 0600 in a 0700 directory and answers only our own
uid; the secret lives in the daemon's memory, in no file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import struct
from pathlib import Path

from streamalchemy import home

log = logging.getLogger("streamalchemy.inputs")


class InputSockets:
    """One listening socket per stream name that needs one, in ``directory``.

    Served from the event loop's thread (``open`` must be called there): a script
    is a few hundred bytes, written whole at once.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._listeners: dict[str, tuple[socket.socket, Path]] = {}

    def path_for(self, name: str) -> Path:
        # No longer than the control socket beside it (in/ + 10 + .sock): Unix socket
        # paths are capped near 107 bytes.
        return self.directory / f"{hashlib.sha256(name.encode()).hexdigest()[:10]}.sock"

    def open(self, name: str, script: str) -> str:
        """Serve ``script`` to every connection on ``name``'s socket; return the socket path."""
        self.close(name)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path_for(name)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener = home.bind_private(path)
        listener.listen(16)
        listener.setblocking(False)
        payload = script.encode()
        asyncio.get_running_loop().add_reader(listener, _answer, listener, payload, name)
        self._listeners[name] = (listener, path)
        return str(path)

    def close(self, name: str) -> None:
        """Stop serving ``name``'s source (its FFmpeg has stopped for good)."""
        entry = self._listeners.pop(name, None)
        if entry is None:
            return
        listener, path = entry
        asyncio.get_running_loop().remove_reader(listener)
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def close_all(self) -> None:
        for name in list(self._listeners):
            self.close(name)


def _answer(listener: socket.socket, payload: bytes, name: str) -> None:
    """Accept one FFmpeg and hand it the script, if it runs as our own user."""
    try:
        conn, _ = listener.accept()
    except (BlockingIOError, InterruptedError):
        return
    with conn:
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            if struct.unpack("3i", creds)[1] not in (os.geteuid(), 0):
                log.warning("refused a connection to the source socket of %s", name)
                return
            conn.settimeout(1.0)
            conn.sendall(payload)
        except OSError:
            pass
