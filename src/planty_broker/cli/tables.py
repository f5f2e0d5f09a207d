"""Tables that fit the terminal: columns dropped or abbreviated by width, never a broken word.

Every `planty` table goes through `fit_table`. Each column has a priority: when
the rows do not fit the console's width (80 columns when piped), the least
important columns go first (priority 0 never goes), then the columns that may be
abbreviated are cut with an ellipsis down to their minimum width. Cells never wrap,
so `presence` never reads `prese/nce` and `sim-0001` never `sim-000/1`. The same
data in full is what `--json` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

Cell = str | Text
GAP = 2  # spaces between two columns


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: `priority` 0 is never dropped, higher numbers go first; `shrink` is
    the width it may be cut down to with an ellipsis (0: never cut)."""

    header: str
    priority: int = 0
    justify: Literal["left", "right"] = "left"
    shrink: int = 0


def cell(value: object, style: str = "") -> Text:
    """A cell shown literally (no markup), optionally styled."""
    return Text(str(value), style=style)


def _width(value: Cell) -> int:
    text = value if isinstance(value, Text) else Text(value)
    return max((Text(line).cell_len for line in text.plain.splitlines()), default=0)


def layout(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int) -> list[int]:
    """Each column's width, -1 for a dropped one (see the module docstring).

    Shrinkable columns count at their minimum while deciding what to drop, so as
    many columns as possible stay; the room left then goes back to them, the most
    important first.
    """
    natural = [max([len(c.header), *(_width(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    least = [
        min(natural[i], max(c.shrink, len(c.header))) if c.shrink else natural[i]
        for i, c in enumerate(columns)
    ]
    kept = list(range(len(columns)))

    def total(widths: list[int]) -> int:
        return sum(widths[i] for i in kept) + GAP * (len(kept) - 1)

    droppable = sorted(
        (i for i, c in enumerate(columns) if c.priority > 0),
        key=lambda i: (-columns[i].priority, -i),
    )
    for i in droppable:
        if total(least) <= width:
            break
        kept.remove(i)
    widths = list(least)
    for i in sorted(kept, key=lambda i: columns[i].priority):
        room = width - total(widths)
        if room <= 0:
            break
        widths[i] = min(natural[i], widths[i] + room)
    return [widths[i] if i in kept else -1 for i in range(len(columns))]


def fit_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    console: Console,
    title: str | None = None,
    *,
    width: int | None = None,
) -> Table:
    """A rich Table of `rows` that fits `width` (default `console.width`: the terminal's, 80
    when piped; see the module docstring)."""
    widths = layout(columns, rows, width or console.width)
    t = Table(
        title=title,
        box=None,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        header_style="bold",
        title_justify="left",
    )
    kept = [i for i, w in enumerate(widths) if w >= 0]
    for i in kept:
        c = columns[i]
        t.add_column(
            c.header,
            justify=c.justify,
            no_wrap=True,
            overflow="ellipsis",
            width=widths[i],
        )
    for r in rows:
        t.add_row(*(r[i] if isinstance(r[i], Text) else Text(str(r[i])) for i in kept))
    return t
