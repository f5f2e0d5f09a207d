"""Small helpers for user-facing text (messages, logs, tables). Imports nothing of ours."""

from __future__ import annotations


def plural(n: int, noun: str, many: str = "") -> str:
    """`n` and the noun in the right number: "1 command", "3 commands", "0 commands".

    `many`: the plural when it is not `noun` + "s" ("entry", "entries").
    """
    return f"{n} {number(n, noun, many)}"


def number(n: int, noun: str, many: str = "") -> str:
    """The noun alone, in the number `n` asks for (the count shown apart, e.g. in bold)."""
    return noun if n == 1 else many or noun + "s"
