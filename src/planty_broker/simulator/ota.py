"""The device half of updates over the air for simulated devices, without I/O.

Speaks docs/protocol.md "Updates" like device/planty_ota.py: answers an offer with `next`,
checks each chunk's digest (a bad one is asked for again) and each file's sha256, keeps
what it has across reconnects (so a transfer resumes), says `staged` when all is there.
The switch itself (reboot, trial, roll-back) is the device's (simulator/device.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from planty_broker.protocol import OTA_PROTECTED_FILES, ProtocolError
from planty_broker.protocol_ota import Abort, Offer, decode_chunk, decode_offer

_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Staged:
    """A release received and checked: what the device switches to."""

    t: int
    version: str
    files: dict[str, bytes]
    trial_s: int
    max_boots: int


@dataclass(slots=True)
class OtaReceiver:
    """Feed it what arrives on `ota`; it returns what to publish on `ota_ack`."""

    running: str  # the version the device runs
    max_chunk: int = 1024
    offer: Offer | None = None
    files: list[bytearray] = field(default_factory=list)
    file: int = 0
    refused: int = 0
    staged: Staged | None = None

    def receive(self, payload: bytes) -> list[bytes]:
        if payload[:1] == b"\x01":
            return self._chunk(payload)
        try:
            msg = decode_offer(payload)
        except ProtocolError:
            return []
        if isinstance(msg, Abort):
            if self.offer is not None and msg.t == self.offer.t:
                self.offer, self.files = None, []
            return []
        return self._offer(msg)

    def _say(self, **msg: Any) -> list[bytes]:
        return [_encode(msg)]

    def _offer(self, offer: Offer) -> list[bytes]:
        names = [f.name for f in offer.files]
        if any(n in OTA_PROTECTED_FILES for n in names) or offer.chunk > self.max_chunk:
            return self._say(t=offer.t, op="failed", reason="bad offer")
        if self.offer is not None and self.offer.t == offer.t:
            return self._next(offer.t)  # a re-offer: resume from what is here
        if offer.release == self.running:
            return self._say(t=offer.t, op="applied", fw=self.running)
        self.offer, self.files, self.file, self.refused = offer, [bytearray()], 0, 0
        return self._next(offer.t)

    def _next(self, t: int, err: str | None = None) -> list[bytes]:
        if self.offer is not None and self.file >= len(self.offer.files):
            return self._say(t=t, op="staged")
        off = len(self.files[self.file]) if self.files else 0
        msg: dict[str, Any] = {"t": t, "op": "next", "file": self.file, "offset": off}
        if err:
            msg["err"] = err
        return [_encode(msg)]

    def _chunk(self, frame: bytes) -> list[bytes]:
        offer = self.offer
        if offer is None:
            return []
        try:
            t, fi, off, data = decode_chunk(frame)
        except ProtocolError:
            self.refused += 1
            return self._next(offer.t, "digest")
        if t != offer.t:
            return []
        if fi != self.file or off != len(self.files[fi]):
            return self._next(t)
        spec = offer.files[fi]
        buf = self.files[fi]
        buf.extend(data)
        if len(buf) < spec.size:
            return self._next(t)
        if hashlib.sha256(buf).hexdigest() != spec.sha256:
            self.files[fi] = bytearray()
            return self._next(t, "sha256")
        self.file += 1
        if self.file < len(offer.files):
            self.files.append(bytearray())
            return self._next(t)
        self.staged = Staged(
            offer.t,
            offer.release,
            {f.name: bytes(b) for f, b in zip(offer.files, self.files, strict=True)},
            offer.trial_s,
            offer.max_boots,
        )
        self.offer, self.files = None, []
        return self._say(t=t, op="staged")
