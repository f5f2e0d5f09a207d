"""Dead letters: what a device sent that the store refused for good, set aside with why.

A message that decodes but can never be stored (the database refuses the data itself) must
not hold up anything else: it is kept here, bounded, and acknowledged. Pure data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PAYLOAD_BYTES = 4096  # the raw payload kept (the first bytes); `size` says how big it was
MAX_TEXT_CHARS = 500  # topic and error text kept


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused message: its device and topic, the raw payload (bounded), why, when."""

    device_id: str | None
    topic: str
    payload: bytes
    size: int
    error: str
    at_ms: int
    id: int = 0  # given by the store


def clean_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Text any database can hold: no NUL, no lone surrogate, at most `limit` characters."""
    text = text.replace("\x00", "\\0")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8", "replace")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dead_letter(
    device_id: str | None, topic: str, payload: bytes, error: str, at_ms: int
) -> DeadLetter:
    """A dead letter with every field made storable and bounded."""
    return DeadLetter(
        device_id=None if device_id is None else clean_text(device_id, 128),
        topic=clean_text(topic),
        payload=bytes(payload[:MAX_PAYLOAD_BYTES]),
        size=len(payload),
        error=clean_text(error),
        at_ms=at_ms,
    )
