"""Console entry point, with a fast path for the commands that scripts poll.

``list --json``, ``saved --json``, ``daemon status --json`` and ``show NAME --json``
run in monitoring loops and cron jobs; they skip Typer and rich, whose imports
alone cost several times Python's own start-up, and call the very functions of
``commands`` that the Typer commands call, so both print exactly the same thing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

# Not typing's: importing typing costs the polled commands 2-3 ms (mypy reads any
# TYPE_CHECKING as its own).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from streamalchemy.errors import StreamAlchemyError


def report_failure(exc: StreamAlchemyError, as_json: bool) -> int:
    """Print a failure the contract's way (one stderr line) and return its exit code."""
    from streamalchemy.credentials import mask_credentials

    message = mask_credentials(" ".join(str(exc).split()))  # one line, no secret
    if as_json:
        print(json.dumps({"success": False, "message": message}))
    print(f"streamalchemy: {message}", file=sys.stderr)
    return exc.exit_code


def run_json(action: Callable[[], Any]) -> int:
    """Run one command function and print its JSON document; return the exit code."""
    from streamalchemy.errors import StreamAlchemyError

    try:
        result = action()
    except StreamAlchemyError as exc:
        return report_failure(exc, as_json=True)
    print(json.dumps(result))
    return 0


def _fast_path(args: list[str]) -> Callable[[], Any] | None:
    """The command function for a fast-path command line, or None for Typer to parse it."""
    if args.count("--json") != 1:
        return None
    words = [a for a in args if a != "--json"]
    from streamalchemy import commands

    match words:
        case ["list"]:
            return commands.list_streams
        case ["saved"]:
            return commands.saved
        case ["daemon", "status"]:
            return commands.daemon_status
        case ["show", name] if not name.startswith("-"):
            return lambda: commands.show(name)
    return None


def main() -> None:
    action = _fast_path(sys.argv[1:])
    if action is not None:
        sys.exit(run_json(action))
    from streamalchemy.cli import main as typer_main

    typer_main()
