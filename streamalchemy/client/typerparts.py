"""The Typer pieces the ``cli`` declarations are built from: each ``start`` option from
its row of the option table (``core.options``), stream-name completion, and the parsers
that refuse a bad value in words.

Imported by ``cli`` only (Typer is never on the fast path).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from streamalchemy.client import commands
from streamalchemy.core.options import BY_NAME
from streamalchemy.core.spec import check_option
from streamalchemy.errors import InvalidInput


def complete_names(incomplete: str) -> list[str]:
    """Stream names for the shell: the state file's and a running daemon's; never starts one."""
    try:
        return [n for n in commands.stream_names() if n.startswith(incomplete)]
    except Exception:  # completion must never print a traceback into the shell
        return []


def start_option(key: str) -> Any:
    """The Typer option of a ``start`` option, built from its row of ``options.START``."""
    option = BY_NAME[key]
    choices = option.choices

    def parse(value: str) -> str:
        try:
            check_option(key, value)
        except InvalidInput as exc:
            raise typer.BadParameter(str(exc)) from None
        return value

    def complete(incomplete: str) -> list[str]:
        return [c for c in choices if c.startswith(incomplete)]

    # The default is in the help text, not the parameter: a None reaching the daemon
    # tells an explicit --resolution (refused with --codec copy) from the default.
    # "\[": rich would take a bare "[default: ...]" for markup and drop it.
    stated = f" \\[default: {option.default}]" if option.default else ""
    return typer.Option(
        *([f"--{key}"] if option.flag else []),
        help=option.help + stated,
        show_default=not option.default,
        metavar=f"[{'|'.join(choices)}]" if choices else option.metavar,
        parser=parse if option.checked else whole() if option.integer else None,
        autocompletion=complete if choices else None,
    )


def whole(least: int | None = None) -> Callable[[str], int]:
    """A parser of whole numbers (from ``least`` up), refusing in words."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not a whole number") from None
        if least is not None and number < least:
            raise typer.BadParameter(f"{value} is less than {least}")
        return number

    return parse


def output_format(value: str) -> str:
    if value != "wide":
        raise typer.BadParameter(f"{value!r} is not wide (use --json for JSON)")
    return value
