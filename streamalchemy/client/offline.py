"""What a command does to the state file alone, while the daemon is down.

Starting the daemon to answer would restore every saved stream first; these answer
from the state file (under its lock) instead. Nothing here starts or signals a process.
"""

from __future__ import annotations

from streamalchemy.core.documents import StopResult
from streamalchemy.errors import StreamNotFound
from streamalchemy.persist import StateStore


def stop_saved(store: StateStore, names: list[str], all_streams: bool) -> StopResult:
    """``stop NAME...`` (or ``--all``): remove the names from the state file; unknown
    names fail (exit 4) after the known ones are removed, as the daemon's stop does."""
    saved = store.load()
    names = sorted(saved) if all_streams else list(dict.fromkeys(names))
    stopped = [n for n in names if n in saved]
    if stopped:
        store.remove(*stopped)
    unknown = [n for n in names if n not in saved]
    if unknown:
        done = f" (stopped: {', '.join(stopped)})" if stopped else ""
        raise StreamNotFound(f"no such stream: {', '.join(unknown)}{done}")
    return {"success": True, "stopped": stopped}
