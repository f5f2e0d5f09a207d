"""Small helpers for user-facing text (messages, logs, tables). Imports nothing of ours."""

from __future__ import annotations


def plural(n: int, noun: str, many: str = "") -> str:
    """`n` and the noun in the right number: "1 command", "3 commands", "0 commands".

    `many`: the plural when it is not `noun` + "s" ("entry", "entries").
    """
    return f"{n} {noun if n == 1 else many or noun + 's'}"
