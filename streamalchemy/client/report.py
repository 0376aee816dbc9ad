"""How the CLI reports: a result as JSON or through a view, a failure as one line and
its exit code, usage errors the same way; and the two commands that print as they go
(``logs --follow``, ``top``).

Shared by the Typer commands (``cli``) and the fast path (``client.fastpath``), so both
print exactly the same thing. Lean at import (json and sys only): Typer and rich are
imported by the calls that need them, never by the fast path.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

# Not typing's: importing typing costs the polled commands 2-3 ms (mypy reads any
# TYPE_CHECKING as its own).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from typer import Typer

    from streamalchemy.errors import StreamAlchemyError


def report_failure(exc: StreamAlchemyError, as_json: bool) -> int:
    """Print a failure the contract's way (one stderr line) and return its exit code."""
    from streamalchemy.core.masking import mask_credentials

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


def fail(exc: StreamAlchemyError, as_json: bool) -> NoReturn:
    """Report ``exc`` and leave the Typer command with its exit code."""
    import typer

    raise typer.Exit(report_failure(exc, as_json))


def emit(as_json: bool, action: Callable[[], Any], show: Callable[[Any], None]) -> Any:
    """Run ``action``; print its result as JSON or through ``show``; map errors to exit codes."""
    from streamalchemy.errors import StreamAlchemyError

    try:
        result = action()
    except StreamAlchemyError as exc:
        fail(exc, as_json)
    if as_json:
        print(json.dumps(result))
    else:
        show(result)
    return result


def view(name: str, **options: Any) -> Callable[[Any], None]:
    """The rich view of ``client.render`` by name, imported only when a person reads it."""

    def show(result: Any) -> None:
        from streamalchemy.client import render

        getattr(render, name)(result, **options)

    return show


def logs(name: str | None, lines: int, follow: bool, as_json: bool) -> None:
    """``logs``: the last ``lines`` of one stream's log, or of every stream's (each line
    prefixed with its name), then with ``follow`` the new lines as they come."""
    from streamalchemy.client import commands
    from streamalchemy.client.text import plain
    from streamalchemy.errors import InvalidInput

    if as_json and follow:
        message = "--follow prints lines as they come; it cannot be combined with --json"
        fail(InvalidInput(message), as_json)
    if name is not None:
        result = emit(
            as_json,
            lambda: commands.logs(name, lines),
            lambda r: print("\n".join(map(plain, r["lines"]))) if r["lines"] else None,
        )
        paths, offsets = {name: result["path"]}, {name: result["offset"]}
    else:
        tails = emit(
            as_json,
            lambda: {"success": True, "logs": commands.all_logs(lines)},
            lambda r: _print_prefixed({n: t["lines"] for n, t in r["logs"].items()}),
        )
        paths = {n: t["path"] for n, t in tails["logs"].items()}
        offsets = {n: t["offset"] for n, t in tails["logs"].items()}
    if follow:
        width = max(map(len, paths), default=0)
        try:
            # Without NAME, streams started from now on are followed too (as pm2 does).
            lines_of = commands.follow(paths, offsets=offsets, every_stream=name is None)
            for stream, line in lines_of:
                print(_prefixed(stream, line, width) if name is None else plain(line), flush=True)
        except KeyboardInterrupt:
            pass


def _prefixed(name: str, line: str, width: int) -> str:
    """One line of a stream's log among every stream's: ``name | line``."""
    from streamalchemy.client.text import plain

    return f"{name.ljust(width)} | {plain(line)}"


def _print_prefixed(tails: dict[str, list[str]]) -> None:
    width = max(map(len, tails), default=0)
    for stream, lines in tails.items():
        for line in lines:
            print(_prefixed(stream, line, width))


def top(wide: bool, as_json: bool) -> int:
    """``top``: live at a terminal, one snapshot otherwise, the list's JSON with --json."""
    from streamalchemy.client import commands

    if as_json:
        emit(True, commands.list_streams, print)
        return 0
    from streamalchemy.client import top as view
    from streamalchemy.client.render import console
    from streamalchemy.errors import StreamAlchemyError

    fetch = view.fetcher(commands.client())
    try:
        if console.is_terminal:
            return view.live(fetch, console, wide=wide)
        return view.once(fetch, console, wide=wide)
    except StreamAlchemyError as exc:
        fail(exc, False)


def run_app(app: Typer) -> NoReturn:
    """Run the Typer app; a usage error becomes one line (and JSON under --json)."""
    import typer

    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="streamalchemy", standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:
        format_message = getattr(exc, "format_message", None)
        if format_message is None or not isinstance(getattr(exc, "exit_code", None), int):
            raise
        # A usage error (wrong option, bad value, missing argument): one line, as
        # every other error, pointing at the command's help.
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "streamalchemy"
        message = format_message().replace("Value error, ", "").rstrip(".")
        if not message:  # the help was shown instead of running nothing
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        message += f" (see '{where} --help')"
        if "--json" in sys.argv[1:]:
            print(json.dumps({"success": False, "message": message}))
        print(f"streamalchemy: {message}", file=sys.stderr)
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    sys.exit(code if isinstance(code, int) else 0)
