"""Talk HTTP/JSON to the daemon over its Unix socket, starting the daemon on demand.

Kept to the standard library's socket and json so that a ``--json`` command starts
fast: scripts call the CLI in loops.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time

from streamalchemy.errors import DaemonUnreachable, OperationFailed, error_for_status
from streamalchemy.settings import Settings

TYPE_CHECKING = False  # not typing's: the polled --json commands skip its import
if TYPE_CHECKING:
    from pathlib import Path
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
        if self.settings.autostart:
            hint = "any command that needs it starts it, e.g. `streamalchemy list`"
        else:
            hint = (
                "autostart is off (STREAMALCHEMY_AUTOSTART=0): start it as a service "
                "(`streamalchemy service install`) or with STREAMALCHEMY_AUTOSTART=1"
            )
        return f"the daemon is not running (no answer on {sock}); {hint}"

    def start_daemon(self, *, restore: bool = True) -> None:
        """Start the daemon fully detached and wait, bounded, until its socket answers."""
        import subprocess  # only here: the polled --json commands never start a daemon

        from streamalchemy import home

        home.check(self.settings)  # the daemon would refuse it: say why now, exit 2
        with contextlib.suppress(OSError):
            _report_path(self.settings).unlink()  # a report left by an earlier launch
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
            # A daemon that lost the race to a concurrent one exits too: then wait for
            # the winner's socket. Any other early exit is a failure, said at once.
            if proc.poll() is not None and not _daemon_holds(self.settings.data_dir):
                raise DaemonUnreachable(
                    f"the daemon could not start: {_launch_report(self.settings, proc.returncode)}"
                )
            time.sleep(0.05)
        raise DaemonUnreachable(
            f"the daemon did not start within {STARTUP_WAIT:g}s; see {log_file}"
        )


def _report_path(settings: Settings) -> Path:
    return settings.socket.parent / "daemon.failed"


def launch_failed(settings: Settings, reason: str) -> None:
    """Called by a daemon that gives up at launch: leave its one-line reason where an
    autostarting command reads it (``daemon.log`` may be what could not be opened).
    Nothing is written into a home the daemon refused: the command says why itself."""
    from streamalchemy import home
    from streamalchemy.errors import StreamAlchemyError

    try:
        home.check(settings)
    except StreamAlchemyError:
        return
    with contextlib.suppress(OSError):
        path = _report_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(" ".join(reason.split()) + "\n")


def _launch_report(settings: Settings, returncode: int) -> str:
    try:
        reason = _report_path(settings).read_text(errors="replace").strip()
    except OSError:
        reason = ""
    log_file = settings.log_dir / "daemon.log"
    return reason or f"it exited with code {returncode} at launch; see {log_file}"


def _daemon_holds(data_dir: Path) -> bool:
    """Whether a daemon holds this home's instance lock (``daemon.pid``)."""
    try:
        fd = os.open(data_dir / "daemon.pid", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
