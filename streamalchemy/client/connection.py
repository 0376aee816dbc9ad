"""Talk HTTP/JSON to the daemon over its Unix socket, starting the daemon on demand.

Kept to the standard library's socket and json so that a ``--json`` command starts
fast: scripts call the CLI in loops.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from streamalchemy.errors import DaemonUnreachable, OperationFailed, error_for_status
from streamalchemy.settings import Settings

TYPE_CHECKING = False  # not typing's: the polled --json commands skip its import
if TYPE_CHECKING:
    from typing import Any

STARTUP_WAIT = 15.0  # seconds the CLI waits for an autostarted daemon's socket


class Client:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.settings.socket))
        except OSError:
            sock.close()
            raise
        return sock

    def reachable(self) -> bool:
        try:
            self._connect(2.0).close()
        except OSError:
            return False
        return True

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float = 120.0,
        autostart: bool = True,
    ) -> dict[str, Any]:
        """Send one request; raise the error the daemon answered with, if any."""
        try:
            sock = self._connect(timeout)
        except OSError as exc:
            if not (autostart and self.settings.autostart):
                raise DaemonUnreachable(self._unreachable(exc)) from None
            self.start_daemon()
            sock = self._connect(timeout)
        payload = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n"
        )
        chunks = []
        with sock:
            try:
                sock.sendall(head.encode() + payload)
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except TimeoutError:
                raise OperationFailed(f"the daemon did not answer within {timeout:g}s") from None
            except OSError as exc:
                raise DaemonUnreachable(f"lost the connection to the daemon: {exc}") from None
        raw = b"".join(chunks)
        head_bytes, _, content = raw.partition(b"\r\n\r\n")
        try:
            status = int(head_bytes.split(b" ", 2)[1])
            reply: dict[str, Any] = json.loads(content)
        except (IndexError, ValueError):
            raise OperationFailed("the daemon sent a reply that is not JSON") from None
        if status >= 400:
            raise error_for_status(status, str(reply.get("message", f"HTTP {status}")))
        return reply

    def _unreachable(self, exc: OSError) -> str:
        sock = self.settings.socket
        if isinstance(exc, PermissionError):
            return f"cannot connect to the daemon at {sock}: permission denied"
        hint = "start it with `streamalchemy daemon run`"
        if not self.settings.autostart:
            hint += " (autostart is off: STREAMALCHEMY_AUTOSTART=0)"
        return f"the daemon is not running (no answer on {sock}); {hint}"

    def start_daemon(self, *, restore: bool = True) -> None:
        """Start the daemon fully detached and wait, bounded, until its socket answers."""
        import subprocess  # only here: the polled --json commands never start a daemon

        from streamalchemy import home

        home.check(self.settings)  # the daemon would refuse it: say why now, exit 2
        log_file = self.settings.log_dir / "daemon.log"
        argv = [sys.executable, "-m", "streamalchemy", "daemon", "run"]
        proc = subprocess.Popen(
            argv if restore else [*argv, "--no-restore"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + STARTUP_WAIT
        while time.monotonic() < deadline:
            if self.reachable():
                return
            # A daemon that lost the race to a concurrent one exits 1: keep waiting for
            # the winner's socket. Reap it so it does not linger as a zombie.
            proc.poll()
            time.sleep(0.05)
        raise DaemonUnreachable(
            f"the daemon did not start within {STARTUP_WAIT:g}s; see {log_file}"
        )
