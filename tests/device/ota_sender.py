"""The broker half of an update, over a raw MQTT client: for device tests without the gateway.

Speaks docs/protocol.md "Updates" exactly as the gateway does: an offer, then one chunk per
`next` the device sends, a re-offer when the device has been silent for `retry_s` (that is
the whole retransmission scheme: the device answers an offer with where it stands).
`corrupt` names chunks to flip a byte in, once each, to prove they are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from tests.device.backend import MqttBackend

HDR = "!BIBI8s"


@dataclass(frozen=True, slots=True)
class Release:
    version: str
    files: tuple[tuple[str, bytes], ...]

    def manifest(self) -> list[dict[str, Any]]:
        return [
            {"name": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
            for n, b in self.files
        ]


def frame(t: int, file: int, offset: int, data: bytes) -> bytes:
    return struct.pack(HDR, 1, t, file, offset, hashlib.sha256(data).digest()[:8]) + data


@dataclass
class Sender:
    backend: MqttBackend
    device_id: str
    release: Release
    t: int = 1
    chunk: int = 512
    trial_s: int = 300
    max_boots: int = 3
    retry_s: float = 2.0
    corrupt: set[tuple[int, int]] = field(default_factory=set)
    sent_chunks: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)
    outcome: dict[str, Any] | None = None
    nexts: list[dict[str, Any]] = field(default_factory=list)

    def _publish(self, payload: bytes) -> None:
        client = self.backend._client
        assert client is not None
        client.publish(self.backend._base + self.device_id + "/ota", payload, qos=1)

    def offer(self) -> None:
        msg = {
            "op": "offer",
            "t": self.t,
            "release": self.release.version,
            "chunk": self.chunk,
            "files": self.release.manifest(),
            "trial_s": self.trial_s,
            "max_boots": self.max_boots,
        }
        self._publish(json.dumps(msg).encode())

    def _answer(self, ack: dict[str, Any]) -> None:
        op = ack.get("op")
        if ack.get("t") != self.t:
            return
        if op == "next":
            self.nexts.append(ack)
            if ack.get("err"):
                self.refused.append(ack)
            fi, off = ack["file"], ack["offset"]
            data = self.release.files[fi][1][off : off + self.chunk]
            out = frame(self.t, fi, off, data)
            if (fi, off) in self.corrupt:
                self.corrupt.discard((fi, off))
                out = out[:-1] + bytes([out[-1] ^ 0xFF])
            self.sent_chunks += 1
            self._publish(out)
        elif op in ("staged", "failed", "applied"):
            self.outcome = ack

    async def run(self, until: Any, timeout: float = 60.0) -> None:
        """Offer, answer every ack, re-offer after silence, until `until()` holds."""
        seen = len(self.backend.of(self.device_id, "ota_ack"))
        self.offer()
        quiet_since = time.monotonic()
        deadline = time.monotonic() + timeout
        while not until():
            acks = self.backend.of(self.device_id, "ota_ack")
            for ack in acks[seen:]:
                self._answer(ack)
                quiet_since = time.monotonic()
            seen = len(acks)
            if time.monotonic() - quiet_since > self.retry_s:
                self.offer()
                quiet_since = time.monotonic()
            if time.monotonic() > deadline:
                raise AssertionError(f"update not done in {timeout} s; last acks {acks[-5:]}")
            await asyncio.sleep(0.005)
