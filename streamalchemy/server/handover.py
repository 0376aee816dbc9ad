"""Hand the daemon's listening sockets and instance lock to its next image across exec.

``daemon restart`` (and SIGHUP) re-executes the daemon in place, as nginx and HAProxy
do for a binary upgrade: the pid stays, so every FFmpeg stays its child. What must
survive the exec (the instance lock on ``daemon.pid``, the listening control socket,
the metrics listeners) is passed by descriptor number in one environment variable,
``STREAMALCHEMY_HANDOVER``, which names the pid it is meant for (as systemd's
``LISTEN_PID``): a process that merely inherits the variable ignores it. Everything
else the daemon holds is close-on-exec (Python's default) and ends with the old image.

Nothing here decides when to restart or touches a stream: the daemon does.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import sys
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from streamalchemy.errors import OperationFailed

ENV = "STREAMALCHEMY_HANDOVER"
FORMAT = 1
PREFLIGHT_TIMEOUT = 60.0  # seconds the new code may take to import
CHECK = "check"  # the variable's value for a dry run of the new code (``preflight``)


@dataclass(frozen=True)
class Handover:
    """The descriptors one daemon image leaves to the next, and where they came from."""

    lock: int
    control: int
    metrics: tuple[int, ...] = ()
    metrics_addr: tuple[str, int] | None = None
    previous_version: str = ""
    pid: int = field(default_factory=os.getpid)

    @property
    def fds(self) -> tuple[int, ...]:
        return (self.lock, self.control, *self.metrics)


def encode(handover: Handover) -> str:
    return json.dumps(
        {
            "format": FORMAT,
            "pid": handover.pid,
            "lock": handover.lock,
            "control": handover.control,
            "metrics": list(handover.metrics),
            "metrics_addr": list(handover.metrics_addr) if handover.metrics_addr else None,
            "previous_version": handover.previous_version,
        }
    )


def _open_fd(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 3:
        raise ValueError(f"not a descriptor number: {value!r}")
    os.fstat(value)  # OSError when nothing is open there
    return value


def take(env: MutableMapping[str, str], pid: int) -> Handover | None:
    """Remove the variable from ``env``; the handover it holds when meant for ``pid``.

    Removed in every case, so that no FFmpeg and no later daemon inherits it. A
    variable for another pid (inherited from an ancestor) or one that does not hold
    open descriptors is ignored: the daemon then binds afresh, as at any launch.
    """
    raw = env.pop(ENV, None)
    if raw is None or raw == CHECK:
        return None
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT or doc.get("pid") != pid:
            return None
        addr = doc.get("metrics_addr")
        return Handover(
            lock=_open_fd(doc["lock"]),
            control=_open_fd(doc["control"]),
            metrics=tuple(_open_fd(fd) for fd in doc.get("metrics") or ()),
            metrics_addr=(str(addr[0]), int(addr[1])) if addr else None,
            previous_version=str(doc.get("previous_version", "")),
            pid=pid,
        )
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OSError):
        return None


def set_inheritable(handover: Handover, inheritable: bool) -> None:
    """Open the descriptors to the next image, or close them to children again."""
    for fd in handover.fds:
        os.set_inheritable(fd, inheritable)


def _listening(fd: int, *families: int) -> socket.socket | None:
    """The listening stream socket of one of ``families`` at ``fd``; else None, ``fd`` closed."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    if (
        sock.family not in families
        or sock.type != socket.SOCK_STREAM
        or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    ):
        sock.close()
        return None
    return sock


def control_socket(handover: Handover, path: Path) -> socket.socket | None:
    """The inherited control socket when it still listens at ``path``; else None."""
    sock = _listening(handover.control, socket.AF_UNIX)
    if sock is not None and sock.getsockname() != str(path):
        sock.close()  # the configuration moved the socket: bind the new path
        return None
    return sock


def metrics_sockets(handover: Handover, addr: tuple[str, int] | None) -> list[socket.socket]:
    """The inherited metrics listeners when they serve ``addr`` still; else none, all closed."""
    found = (_listening(fd, socket.AF_INET, socket.AF_INET6) for fd in handover.metrics)
    socks = [sock for sock in found if sock is not None]
    if addr is not None and addr == handover.metrics_addr and len(socks) == len(handover.metrics):
        return socks
    for sock in socks:
        sock.close()
    return []


def argv() -> list[str]:
    """The command line of this very daemon, for the next image: same options, same entry."""
    return [sys.executable, *sys.orig_argv[1:]]


def checking(env: MutableMapping[str, str]) -> bool:
    """Whether this process is ``preflight``'s dry run (it then prints its version, exits)."""
    return env.get(ENV) == CHECK


async def preflight(current_version: str, timeout: float = PREFLIGHT_TIMEOUT) -> str:
    """The version of the installed code, once it has gone through the daemon's launch.

    The very command line of the next image runs, in the same environment and
    directory, up to the point where the daemon would start (imports, settings,
    options), prints its version and exits. A broken upgrade (a syntax error, a
    missing dependency, a setting it refuses) is caught here, while the running
    daemon can still refuse to give way to it.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, ENV: CHECK},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        out, err = b"", f"it did not import within {timeout:g}s".encode()
    if proc.returncode != 0 or not out.strip():
        lines = err.decode(errors="replace").strip().splitlines() or ["no output"]
        raise OperationFailed(
            f"the installed code does not start ({lines[-1].strip()}); "
            f"the daemon keeps running version {current_version}"
        )
    return out.decode(errors="replace").strip().splitlines()[-1]


def exec_into(handover: Handover, command: Sequence[str]) -> NoReturn:
    """Replace this process with ``command``, the handover's descriptors open to it.

    Raises OSError (and leaves the descriptors closed to children again) when the
    exec itself fails; on success it does not return.
    """
    set_inheritable(handover, True)
    env = {**os.environ, ENV: encode(handover)}
    try:
        os.execve(command[0], list(command), env)
    except OSError:
        set_inheritable(handover, False)
        raise
