"""Tables that fit the terminal: whole columns drop out in a chosen order, none is squeezed.

``list``, ``saved`` and ``top`` describe their columns once, as rows of a table
(header, cell, rank). At a narrow terminal the columns of the highest rank drop
out first, as pm2 and systemctl do, so that what stays (name, status and time
left at least) is printed whole on one line per stream; ``wide`` keeps every
column (kubectl's ``-o wide``). Nothing here asks the daemon or prints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich.table import Table
from rich.text import Text

from streamalchemy.client.text import plain

# Never dropped: the columns a user must read whole at any width.
ALWAYS = 0
GAP = 2  # spaces between two columns


@dataclass(frozen=True)
class Column:
    """One column: its header, how a row's cell reads, and when it drops out."""

    header: str
    cell: Callable[[dict[str, Any]], str | Text]
    rank: int  # ALWAYS, else higher ranks drop out first
    justify: Literal["left", "right"] = "left"


def _length(cell: str | Text) -> int:
    return cell.cell_len if isinstance(cell, Text) else Text(plain(cell)).cell_len


def fit(
    columns: Sequence[Column], rows: Sequence[dict[str, Any]], width: int | None
) -> tuple[list[Column], list[list[str | Text]], int]:
    """The columns that fit in ``width`` (all of them for None), in their order, the
    cells of each row for them, and the width they take."""
    cells = [[c.cell(row) for c in columns] for row in rows]
    widths = [
        max([len(c.header), *(_length(line[i]) for line in cells)]) for i, c in enumerate(columns)
    ]
    kept = list(range(len(columns)))

    def total() -> int:
        return sum(widths[k] for k in kept) + GAP * (len(kept) - 1)

    if width is not None:
        # Drop the highest rank first; among equals, the rightmost.
        for i in sorted(kept, key=lambda i: (columns[i].rank, i), reverse=True):
            if total() <= width:
                break
            if columns[i].rank != ALWAYS:
                kept.remove(i)
    return [columns[i] for i in kept], [[line[i] for i in kept] for line in cells], total()


def table(
    columns: Sequence[Column], rows: Sequence[dict[str, Any]], width: int | None
) -> tuple[Table, int]:
    """A borderless rich table of ``rows`` with the columns that fit in ``width``, and
    its own width (to print it whole: rich would squeeze it into the terminal)."""
    shown, cells, natural = fit(columns, rows, width)
    grid = Table(box=None, header_style="bold", pad_edge=False, padding=(0, GAP // 2))
    for column in shown:
        grid.add_column(column.header, justify=column.justify, no_wrap=True, overflow="fold")
    for line in cells:
        grid.add_row(*(c if isinstance(c, Text) else Text(plain(c)) for c in line))
    return grid, natural
