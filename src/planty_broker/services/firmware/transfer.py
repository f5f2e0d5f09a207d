"""Sending one release to one device: the broker half of docs/protocol.md "Updates".

A `Session` per device being updated. It offers the manifest, then answers each `next`
with the chunk asked for (stop and wait: one chunk per device in flight, every publish
paced through the shared token bucket). Anything lost is recovered one way: after
`ack_timeout_s` of silence from a device that is online, the offer goes again and the
device says where it stands (it resumes from what is on its flash). After `staged` the
session waits for the device's status to say how the switch ended (service.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from planty_broker.config import FirmwareSettings
from planty_broker.domain.firmware import Release
from planty_broker.protocol import Channel, Topics
from planty_broker.protocol_ota import Abort, Offer, OfferFile, OtaAck, chunk_frame, encode_offer
from planty_broker.text import plural

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]  # topic, payload: paced, QoS 1
Outcome = Callable[[str, str, str], None]  # device id, "staged" | "failed" | "applied", reason


@dataclass(slots=True)
class Session:
    device_id: str
    t: int
    release: Release
    contents: Mapping[str, bytes]
    chunk: int
    phase: str = "offer"  # offer -> transfer -> switching
    heard_s: float = 0.0  # monotonic time of the last ack (or of the last offer)
    silences: int = 0
    switching_since_s: float = 0.0
    sent_bytes: int = 0
    confirmed: int = 0  # bytes the device has, by its last `next`
    refused: int = 0  # chunks the device refused (digest), re-sent
    files: list[bytes] = field(default_factory=list)


class Transfers:
    """Every device's transfer, driven by acks, presence and a periodic `tick`."""

    def __init__(
        self,
        topics: Topics,
        settings: FirmwareSettings,
        publish: Publish,
        outcome: Outcome,
        clock: Callable[[], float],
    ) -> None:
        self._topics = topics
        self._s = settings
        self._publish = publish
        self._outcome = outcome
        self._clock = clock
        self.sessions: dict[str, Session] = {}  # bounded: at most max_parallel + resumed ones

    def __contains__(self, device_id: str) -> bool:
        return device_id in self.sessions

    def sending(self) -> int:
        """Sessions still moving bytes (not waiting for a switch)."""
        return sum(1 for s in self.sessions.values() if s.phase != "switching")

    def open(
        self,
        device_id: str,
        t: int,
        release: Release,
        contents: Mapping[str, bytes],
        device_chunk: int | None,
    ) -> Session:
        chunk = min(self._s.chunk_bytes, device_chunk or self._s.chunk_bytes)
        session = Session(device_id, t, release, contents, max(64, chunk))
        session.files = [bytes(contents[f.name]) for f in release.files]
        session.heard_s = self._clock()
        self.sessions[device_id] = session
        return session

    def close(self, device_id: str) -> Session | None:
        return self.sessions.pop(device_id, None)

    def _topic(self, device_id: str) -> str:
        return self._topics.device(device_id, Channel.OTA)

    async def offer(self, session: Session) -> None:
        r = session.release
        offer = Offer(
            t=session.t,
            release=r.version,
            chunk=session.chunk,
            files=tuple(OfferFile(f.name, f.size, f.sha256) for f in r.files),
            trial_s=self._s.trial_s,
            max_boots=self._s.max_boots,
        )
        session.heard_s = self._clock()
        await self._publish(self._topic(session.device_id), encode_offer(offer))

    async def abort(self, device_id: str) -> None:
        session = self.sessions.pop(device_id, None)
        if session is not None and session.phase != "switching":
            await self._publish(self._topic(device_id), encode_offer(Abort(t=session.t)))

    async def on_ack(self, device_id: str, ack: OtaAck) -> None:
        session = self.sessions.get(device_id)
        if session is None or ack.t != session.t:
            return  # from an older offer, or nobody is updating that device now
        session.heard_s = self._clock()
        session.silences = 0
        if ack.op == "next":
            await self._next(session, ack)
        elif ack.op == "staged":
            session.phase = "switching"
            session.switching_since_s = self._clock()
            session.confirmed = session.release.size
            self._outcome(device_id, "staged", "")
        elif ack.op == "failed":
            self.sessions.pop(device_id, None)
            self._outcome(device_id, "failed", ack.reason or "the device gave up")
        elif ack.op == "applied":
            self.sessions.pop(device_id, None)
            self._outcome(device_id, "applied", f"already ran {ack.fw or session.release.version}")

    async def _next(self, session: Session, ack: OtaAck) -> None:
        fi, off = ack.file or 0, ack.offset or 0
        if fi >= len(session.files) or off > len(session.files[fi]):
            self.sessions.pop(session.device_id, None)
            self._outcome(session.device_id, "failed", f"device asked for file {fi} at {off}")
            return
        if ack.err:
            session.refused += 1
        session.phase = "transfer"
        session.confirmed = sum(len(b) for b in session.files[:fi]) + off
        data = session.files[fi][off : off + session.chunk]
        session.sent_bytes += len(data)
        await self._publish(self._topic(session.device_id), chunk_frame(session.t, fi, off, data))

    async def tick(self, online: Callable[[str], bool]) -> None:
        """Re-offer to silent devices that are online; give up after max_silences offers."""
        now = self._clock()
        switch_limit = self._s.trial_s * (self._s.max_boots + 1) + 60
        for session in list(self.sessions.values()):
            device_id = session.device_id
            if session.phase == "switching":
                if now - session.switching_since_s > switch_limit:
                    self.sessions.pop(device_id, None)
                    self._outcome(
                        device_id,
                        "failed",
                        f"no status from the device {switch_limit} s after it switched",
                    )
                continue
            if not online(device_id):
                session.heard_s = now  # away is not silence: the clock starts when it is back
                continue
            if now - session.heard_s < self._s.ack_timeout_s:
                continue
            session.silences += 1
            if session.silences > self._s.max_silences:
                self.sessions.pop(device_id, None)
                self._outcome(
                    device_id,
                    "failed",
                    f"no answer from the device to {plural(self._s.max_silences, 'offer')}",
                )
                continue
            await self.offer(session)

    async def on_online(self, device_id: str) -> None:
        """The device is back: offer again; it answers from where its flash stands."""
        session = self.sessions.get(device_id)
        if session is not None and session.phase != "switching":
            session.silences = 0
            await self.offer(session)
