"""CLI tables fit the width: columns dropped by priority, long cells cut, no word broken."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from planty_broker.cli.client import fail
from planty_broker.cli.tables import Column, cell, fit_table, layout

COLUMNS = [
    Column("device"),
    Column("presence"),
    Column("since", 3),
    Column("last seen", 2),
    Column("latest readings", 1, shrink=12),
    Column("msgs", 4, "right"),
]
ROW = ["sim-0001", cell("online", "green"), "12m ago", "3s ago",
       "light=812 soil_moisture=0.43 temperature=21.5", "1234"]


def render(width: int, rows: list[list[object]]) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=width, markup=False, color_system=None)
    console.print(fit_table(COLUMNS, rows, console))  # type: ignore[arg-type]
    return out.getvalue().splitlines()


def test_wide_enough_shows_everything() -> None:
    lines = render(200, [ROW])
    assert "light=812 soil_moisture=0.43 temperature=21.5" in lines[1]
    assert lines[0].split() == ["device", "presence", "since", "last", "seen", "latest",
                                "readings", "msgs"]


def test_narrow_the_least_useful_go_and_readings_are_cut_not_wrapped() -> None:
    lines = render(60, [ROW, ROW])
    assert all(len(x) <= 60 for x in lines)
    assert len(lines) == 3  # header and one line per row: nothing wraps
    assert "msgs" not in lines[0] and "since" in lines[0]
    assert lines[1].startswith("sim-0001  online") and "…" in lines[1]
    narrower = render(45, [ROW])
    assert "since" not in narrower[0] and "presence" in narrower[0].split()


@given(
    width=st.integers(min_value=40, max_value=160),
    ids=st.lists(st.from_regex(r"[a-z][a-z0-9-]{2,20}", fullmatch=True), min_size=1,
                 max_size=5),
)
def test_never_wider_than_the_console_and_ids_stay_whole(width: int, ids: list[str]) -> None:
    rows = [[i, *ROW[1:]] for i in ids]
    widths = layout(COLUMNS, rows, width)
    assert widths[0] >= max(len(i) for i in ids)  # the id column is never cut
    lines = render(width, rows)
    kept = sum(w for w in widths if w >= 0) + 2 * (sum(1 for w in widths if w >= 0) - 1)
    if kept <= width:
        assert all(len(x) <= width for x in lines)
    for i in ids:
        assert any(x.startswith(i + " ") or x == i for x in lines), (i, lines)


def test_fail_prints_brackets_literally() -> None:
    import typer

    app = typer.Typer()

    @app.command()
    def boom() -> None:
        fail("PostgreSQL support is not installed: pip install 'planty-broker[postgres]'")

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 1
    assert "pip install 'planty-broker[postgres]'" in result.output
