"""User-facing counts read right: "1 command", never "1 commands"."""

from __future__ import annotations

from planty_broker.text import number, plural


def test_plural_agrees_with_the_count() -> None:
    assert plural(1, "command") == "1 command"
    assert [plural(n, "command") for n in (0, 2, 3)] == ["0 commands", "2 commands", "3 commands"]
    assert plural(1, "dead letter") == "1 dead letter"
    assert plural(2, "entry", "entries") == "2 entries"
    assert plural(-1, "row") == "-1 rows"


def test_the_noun_alone_agrees_with_the_count() -> None:
    assert [number(n, "device") for n in (0, 1, 2)] == ["devices", "device", "devices"]
