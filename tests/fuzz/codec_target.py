"""Coverage-guided fuzzing of the device codec with atheris (libFuzzer for Python).

Run by tests/fuzz/test_codec_fuzz.py as its own process (libFuzzer ends the process when
it is done): `python tests/fuzz/codec_target.py -runs=N -seed=S CORPUS_DIR`.

The first byte of an input picks a decoder, the rest is the payload. The property is the
codec's contract (docs/protocol.md, "Limits"): a payload either decodes into values the
store can hold (64-bit integers, finite floats, text without NUL or lone surrogates, the
size limits), or is refused with a `ProtocolError` carrying an error kind. Any other
exception, or an accepted value the store cannot hold, is a crash: libFuzzer prints the
traceback and writes the input as `crash-<sha1>` to the artifact folder.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import atheris
import msgspec

with atheris.instrument_imports(include=["planty_broker"]):
    from planty_broker import protocol, protocol_ota
    from planty_broker.protocol import (
        INT64_MAX,
        INT64_MIN,
        MAX_DEPTH,
        MAX_NAME_CHARS,
        MAX_NAMES,
        MAX_READINGS,
        TS_MAX_MS,
        TS_MIN_MS,
        ErrorKind,
        ProtocolError,
    )

# (decoder, is what it accepts stored?) The device-side decoders (a command, a claim
# reply) only have to refuse with a kind; their values are not stored by the gateway.
DECODERS: tuple[tuple[Any, bool], ...] = (
    (protocol.decode_status, True),
    (protocol.decode_telemetry, True),
    (protocol.decode_ack, True),
    (protocol.decode_claim_request, True),
    (protocol_ota.decode_ota_ack, True),
    (protocol.decode_command, False),
    (protocol.decode_claim_reply, False),
)


def storable(value: Any, depth: int = 0) -> None:
    """What SQLite and PostgreSQL both hold: 64-bit integers, finite floats, text without
    NUL or lone surrogates, nesting within the codec's bound."""
    if depth > MAX_DEPTH + 2:
        raise AssertionError("nested too deep")
    if isinstance(value, str):
        if "\x00" in value:
            raise AssertionError(f"NUL in {value!r}")
        value.encode("utf-8")  # raises on a lone surrogate
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise AssertionError(f"{value} is outside 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise AssertionError(f"{value} is not finite")
    elif isinstance(value, dict):
        for k, v in value.items():
            storable(k, depth)
            storable(v, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            storable(v, depth + 1)
    else:
        storable(msgspec.to_builtins(value), depth)


def check_limits(result: Any) -> None:
    if isinstance(result, tuple):  # decode_telemetry: (Telemetry, dropped names)
        tel = result[0]
        if tel.ts is not None and not TS_MIN_MS <= tel.ts <= TS_MAX_MS:
            raise AssertionError(f"ts {tel.ts} outside the sane window")
        if len(tel.readings) > MAX_READINGS:
            raise AssertionError("too many readings")
        if not all(0 < len(k) <= MAX_NAME_CHARS for k in tel.readings):
            raise AssertionError("a reading name of a length the store refuses")
    elif isinstance(result, protocol.Status):
        for names in (result.sensors, result.actuators):
            if names is not None and len(names) > MAX_NAMES:
                raise AssertionError("too many names")


def one_input(data: bytes) -> None:
    if not data:
        return
    decode, stored = DECODERS[data[0] % len(DECODERS)]
    try:
        result = decode(data[1:])
    except ProtocolError as exc:
        if not isinstance(exc.kind, ErrorKind):
            raise AssertionError(f"refused without an error kind: {exc!r}") from exc
        return
    if stored:
        storable(result)
        check_limits(result)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
