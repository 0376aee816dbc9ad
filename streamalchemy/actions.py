"""What each read-mostly command does, as functions returning the JSON document.

Shared by the Typer commands in ``cli`` and the fast path in ``main``, so both
print exactly the same thing. Imports stay light: no Typer, no rich.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from streamalchemy.client import Client
from streamalchemy.errors import OperationFailed, StreamAlchemyError
from streamalchemy.settings import Settings, load_settings


def report_failure(exc: StreamAlchemyError, as_json: bool) -> int:
    """Print a failure the contract's way and return its exit code."""
    message = " ".join(str(exc).split())  # one line, whatever the cause
    if as_json:
        print(json.dumps({"success": False, "message": message}))
    print(f"streamalchemy: {message}", file=sys.stderr)
    return exc.exit_code


def client(settings: Settings | None = None) -> Client:
    return Client(settings or load_settings())


def list_streams() -> dict[str, Any]:
    return client().request("GET", "/streams")


def daemon_status() -> dict[str, Any]:
    return client().request("GET", "/status", autostart=False)


def _store(settings: Settings) -> Any:
    from streamalchemy.persist import StateStore

    return StateStore(
        settings.state_file,
        backup_count=settings.backup_count,
        enabled=settings.persistence_enabled,
    )


def saved() -> dict[str, Any]:
    store = _store(load_settings())
    return {"success": True, "streams": store.load(), "enabled": store.enabled}


def restore(dry_run: bool) -> dict[str, Any]:
    """Restore now, reporting each stream, whether or not the daemon is up.

    With the daemon down, a dry run plans from the file without starting one (that
    would restore for real), and a real restore starts it without its launch-time
    restore so that this request does the work and reports every stream.
    """
    c = client()
    if not c.reachable():
        if dry_run:
            return {"success": True, "results": _plan_offline(c.settings)}
        if c.settings.autostart:
            c.start_daemon(restore=False)
    reply = c.request("POST", "/restore_streams", {"dry_run": dry_run}, timeout=600)
    return {"success": reply["success"], "results": reply["results"]}


def _plan_offline(settings: Settings) -> dict[str, dict[str, str]]:
    from streamalchemy import encoders, restore

    choose = encoders.Chooser(settings.ffmpeg, settings.data_dir)
    steps = restore.plan(_store(settings).load(), running=(), choose_encoder=choose)
    return restore.dry_run_results(steps)


def clear() -> dict[str, Any]:
    _store(load_settings()).clear()
    return {"success": True, "message": "All persistent streams cleared"}


STOP_WAIT = 30.0  # seconds `daemon stop` waits for the daemon to exit


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie (exited, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all there is


def daemon_stop() -> dict[str, Any]:
    """Ask the daemon to shut down and wait, bounded, until its process is gone."""
    c = client()
    if not c.reachable():
        return {"success": True, "message": "the daemon is not running"}
    pid = int(c.request("POST", "/shutdown", autostart=False)["pid"])
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        raise OperationFailed(
            f"the daemon (pid {pid}) is still running {STOP_WAIT:g}s after it was asked to stop;"
            f" see its log, or end it with kill {pid}"
        )
    return {"success": True, "message": f"daemon (pid {pid}) stopped", "pid": pid}


def run_json(action: Any) -> int:
    """Run one action and print its JSON document; return the exit code."""
    try:
        result = action()
    except StreamAlchemyError as exc:
        return report_failure(exc, as_json=True)
    print(json.dumps(result))
    return 0
