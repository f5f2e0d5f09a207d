"""The device codec under a coverage-guided fuzzer (atheris), bounded and deterministic.

A fixed number of runs from a fixed seed and a fixed seed corpus: the same inputs on
every machine and on every date, so the cost in `bin/test` is the same every time
(not a time budget). tests/fuzz/codec_target.py holds the property; a failure shows
the fuzzer's traceback and the input that broke it (saved as crash-<sha1>).
Not under tests/unit: the unit tests run twice in bin/test (once with the clock moved),
and this one has nothing to do with the date.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

TARGET = Path(__file__).with_name("codec_target.py")
REPO = Path(__file__).resolve().parents[2]
RUNS = 200_000  # ~6 s here (about 33k runs/s), up to ~20 s on a loaded machine
SEED = 20261203
MAX_LEN = 512

# One well-formed message per decoder (the first byte picks it, as in codec_target.py),
# plus the limits: the fuzzer mutates from here, so it starts deep in the JSON.
SEEDS: list[tuple[int, object]] = [
    (0, {"online": True, "fw": "1.4.2", "boot": 17, "sensors": ["temperature", "light"],
         "actuators": ["pump"], "interval_s": 60, "rssi": -61,
         "ota": {"v": 1, "chunk": 1024, "last": {"t": 3, "fw": "1.4.2", "result": "ok"}}}),
    (0, {"online": False, "reason": "shutdown"}),
    (1, {"seq": 42, "ts": 1764240000123, "readings": {"temperature": 21.5,
                                                        "soil_moisture": 0.43, "light": 812}}),
    (1, {"seq": 9223372036854775807, "readings": {"x": "text", "y": None, "z": True}}),
    (2, {"id": "c-01JD", "ok": True, "result": {"readings": {"a": 1}, "list": [1, [2, [3]]]}}),
    (2, {"id": "c-02", "ok": False, "error": "pump jammed"}),
    (3, {"req": "r-1", "serial": "ESP32-0001", "type": "token", "id": "plant-1",
         "name": "Basil", "token": "t" * 43}),
    (4, {"t": 7, "op": "next", "file": 1, "offset": 4096}),
    (4, {"t": 7, "op": "failed", "err": "digest", "reason": "chunk 3"}),
    (5, {"id": "c-1", "action": "pump.on", "args": {"seconds": 10}, "exp": 1764240060000}),
    (6, {"req": "r-1", "ok": True, "id": "plant-1", "token": "secret", "host": "gw",
         "port": 8883}),
]

# JSON tokens and the protocol's field names (libFuzzer's -dict): the mutations splice
# these in, so the fuzzer reaches the edges (64-bit, doubles, NUL, surrogates) quickly.
TOKENS: list[bytes] = [
    *(t.encode() for t in ("{", "}", "[", "]", ":", ",", '"', "true", "false", "null", "-",
                           "e", ".", "\\", "0.1", "1e308", "1e999", "-1e999", "NaN",
                           "Infinity", "9223372036854775807", "9223372036854775808",
                           "-9223372036854775809", "18446744073709551616", "946684799999",
                           "4102444800001", "\\u0000", "\\ud800", "\\udc00",
                           "\\ud83c\\udf31")),
    b"\xc3\x28",  # broken UTF-8
    b"\xff",
    *(f'"{k}"'.encode() for k in (
        "seq", "ts", "readings", "online", "reason", "boot", "fw", "sensors", "actuators",
        "interval_s", "rssi", "heap", "uptime_s", "ota", "id", "ok", "result", "error",
        "action", "args", "exp", "req", "serial", "type", "name", "token", "t", "op", "file",
        "offset", "err", "v", "chunk", "last",
    )),
]


def test_the_codec_under_a_coverage_guided_fuzzer(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, (which, msg) in enumerate(SEEDS):
        (corpus / f"seed-{i:02d}").write_bytes(bytes([which]) + json.dumps(msg).encode())
    tokens = tmp_path / "json.dict"
    tokens.write_text("".join(f'"{escape(t)}"\n' for t in TOKENS))
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(TARGET),
            f"-runs={RUNS}",
            f"-seed={SEED}",
            f"-max_len={MAX_LEN}",
            "-timeout=10",
            "-rss_limit_mb=1024",
            "-print_final_stats=1",
            f"-dict={tokens}",
            f"-artifact_prefix={artifacts}/",
            str(corpus),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = done.stdout + done.stderr
    crashes = sorted(p.name for p in artifacts.iterdir())
    assert done.returncode == 0 and not crashes, (
        f"the fuzzer found an input the codec mishandles ({crashes}):\n{out[-6000:]}"
    )
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
    assert runs and int(runs.group(1)) >= RUNS, out[-3000:]


def escape(token: bytes) -> str:
    """A dictionary entry in libFuzzer's syntax: printable ASCII, the rest as \\xNN."""
    out = []
    for b in token:
        ch = chr(b)
        out.append(ch if 32 <= b < 127 and ch not in '"\\' else f"\\x{b:02x}")
    return "".join(out)
