"""Console entry point, with a fast path for the commands that scripts poll.

``list --json``, ``saved --json`` and ``daemon status --json`` run in monitoring
loops and cron jobs; they skip Typer, whose import alone costs several times
Python's own start-up, and run the very actions the Typer commands run.
"""

from __future__ import annotations

import sys

from streamalchemy import actions

FAST_PATHS = {
    ("list",): actions.list_streams,
    ("saved",): actions.saved,
    ("daemon", "status"): actions.daemon_status,
}


def main() -> None:
    args = sys.argv[1:]
    if args.count("--json") == 1:
        action = FAST_PATHS.get(tuple(a for a in args if a != "--json"))
        if action is not None:
            sys.exit(actions.run_json(action))
    from streamalchemy.cli import main as typer_main

    typer_main()
