"""Console entry point, with a fast path for the commands that scripts poll.

``list --json``, ``saved --json``, ``daemon status --json`` and ``show NAME --json``
run in monitoring loops and cron jobs; they skip Typer and rich, whose imports
alone cost several times Python's own start-up, and call the very functions of
``commands`` that the Typer commands call, so both print exactly the same thing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from streamalchemy.client.report import report_failure, run_json

# Not typing's: importing typing costs the polled commands 2-3 ms (mypy reads any
# TYPE_CHECKING as its own).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _fast_path(args: list[str]) -> Callable[[], Any] | None:
    """The command function for a fast-path command line, or None for Typer to parse it."""
    if args.count("--json") != 1:
        return None
    words = [a for a in args if a != "--json"]
    from streamalchemy.client import commands

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


def _start_args(args: list[str]) -> tuple[str, dict[str, Any]] | None:
    """NAME and the options of a plain ``start`` command line, each given once and valid
    as Typer would take it; None for anything else (help, an error), which Typer parses.

    The options are the rows of ``options.START``, as Typer's are, plus ``--json``."""
    if args[:1] != ["start"]:
        return None
    from streamalchemy.core.options import BY_NAME
    from streamalchemy.core.spec import check_option
    from streamalchemy.errors import InvalidInput

    names: list[str] = []
    opts: dict[str, Any] = {}
    rest = iter(args[1:])
    for arg in rest:
        if not arg.startswith("-"):
            names.append(arg)
            continue
        key, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        option = BY_NAME.get(key)
        if key in opts or (option is None and key != "json"):
            return None
        if option is None or option.flag:  # --json, or a flag: never with a value
            if eq:
                return None
            opts[key] = True
            continue
        if not eq:  # as Typer: the next word is the value, whatever it looks like
            following = next(rest, None)
            if following is None:
                return None
            value = following
        if option.checked:
            try:
                check_option(key, value)  # what Typer's parser checks; it reports a refusal
            except InvalidInput:
                return None
        if option.integer:
            try:
                opts[key] = int(value)
            except ValueError:
                return None
        else:
            opts[key] = value
    return (names[0], opts) if len(names) == 1 else None


def _start(args: list[str]) -> int | None:
    """``start`` without Typer and rich: their imports cost twice what the daemon takes to
    start a file stream. Prints what the Typer command prints. None: not this path."""
    parsed = _start_args(args)
    if parsed is None:
        return None
    name, opts = parsed
    as_json = opts.pop("json", False)
    from streamalchemy.core.options import START_OPTIONS

    for key in START_OPTIONS.keys() - {"output"}:
        opts.setdefault(key, None)  # the body Typer's command sends: None is the default
    from streamalchemy.client import commands
    from streamalchemy.errors import StreamAlchemyError

    def action() -> Any:
        return commands.start(commands.start_body(name, **opts))

    if as_json:
        return run_json(action)
    try:
        stream = action()["stream"]
    except StreamAlchemyError as exc:
        return report_failure(exc, as_json=False)
    quiet = stream.get("remaining_seconds") is None and stream.get("status") == "running"
    if quiet and not sys.stderr.isatty():
        from streamalchemy.client.text import plain

        print(plain(stream["output"]))  # render.started's whole output in this case
    else:
        from streamalchemy.client.render import started

        started(stream)
    return 0


def _daemon_run(args: list[str]) -> int | None:
    """``daemon run [--no-restore]`` without Typer: its option parsing alone costs some
    50 ms of every daemon launch, before a restore can begin. None: not this command."""
    if args[:2] != ["daemon", "run"] or args[2:] not in ([], ["--no-restore"]):
        return None
    from streamalchemy.client import commands
    from streamalchemy.errors import StreamAlchemyError

    try:
        commands.daemon_run(restore=args[2:] == [])
    except StreamAlchemyError as exc:
        return report_failure(exc, as_json=False)
    except KeyboardInterrupt:  # before the loop's own SIGINT handler, as Typer's path
        return 130
    return 0


def main() -> None:
    code = _daemon_run(sys.argv[1:])
    if code is None:
        code = _start(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    action = _fast_path(sys.argv[1:])
    if action is not None:
        sys.exit(run_json(action))
    from streamalchemy.cli import main as typer_main

    typer_main()
