"""Help screens in words: Typer's commands, minus the Python types it prints by default.

Typer shows each parameter's Python type beside it (``<bool>`` on every flag,
``<str>``, ``<int range> [x>=0]``) and braces a required argument in the usage line
(``{NAME}``). Our options are declared with words instead: a metavar that names
the value (``FILE``, ``[h264|h265|mpeg4|copy]``), the default and any range in the
help text. ``Typer`` here makes every command show those words and nothing else;
parsing is untouched. Imported by ``cli`` only (it needs typer).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import typer
from typer import _click
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from typer.models import CommandFunctionType


class _Argument(TyperArgument):
    """An argument shown by its metavar alone: ``NAME``, ``[NAME]``, ``[NAME...]``."""

    def display_type_rich(self, ctx: _click.Context) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        if self.nargs != 1 and not name.endswith("..."):
            name += "..."
        return name if self.required or name.startswith("[") else f"[{name}]"


class _Option(TyperOption):
    """A flag shows nothing after its name; an option shows its metavar, else VALUE."""

    def display_type_rich(self, ctx: _click.Context) -> str | None:
        if self.is_flag or self.count:
            return None
        return self.metavar or (self.name or "value").upper()

    def _get_number_range_help_str(self) -> str | None:
        return None  # "[x>=0]": the help text says the range in words


def _in_words(params: list[Any]) -> list[Any]:
    for param in params:
        # Same fields, other display methods: the parsing of each stays Typer's.
        if type(param) is TyperArgument:
            param.__class__ = _Argument
        elif type(param) is TyperOption:
            param.__class__ = _Option
    return params


def reflow(help_text: str | None) -> str | None:
    """Paragraphs as one line each (the terminal wraps them), but an indented one (an
    example) as written: rich help keeps every line break it is given."""
    if not help_text:
        return help_text
    paragraphs = inspect.cleandoc(help_text).split("\n\n")
    return "\n\n".join(p if p.startswith(" ") else " ".join(p.split("\n")) for p in paragraphs)


class WordsCommand(TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = reflow(self.help)

    def get_params(self, ctx: _click.Context) -> list[Any]:
        return _in_words(super().get_params(ctx))


class WordsGroup(TyperGroup):
    def get_params(self, ctx: _click.Context) -> list[Any]:
        return _in_words(super().get_params(ctx))


class Typer(typer.Typer):
    """``typer.Typer`` whose commands and groups print their help in words."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=WordsGroup, **kwargs)

    def command(
        self, *args: Any, **kwargs: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        kwargs.setdefault("cls", WordsCommand)
        return super().command(*args, **kwargs)
