"""The update extension of protocol v1 (docs/protocol.md, "Updates over the air"): its codec.

Part of the device protocol (protocol.py holds the topics and the status field `ota`);
nothing else builds an offer or a chunk frame or parses an update ack. Chunks are binary
(a JSON message starts with `{`, a chunk with byte 1) so a device hashes and writes the
data straight from the message.
"""

from __future__ import annotations

import hashlib
import struct

import msgspec

from planty_broker.protocol import (
    DEFAULT_MAX_PAYLOAD,
    ErrorKind,
    Int64,
    ProtocolError,
    Text,
    decode_json,
)

CHUNK_HEADER = struct.Struct("!BIBI8s")  # kind 1, t, file index, offset, sha256(data)[:8]
CHUNK_KIND = 1
MIN_CHUNK = 64
MAX_CHUNK = 4096
ACK_OPS = ("next", "staged", "failed", "applied")


class OfferFile(msgspec.Struct, frozen=True):
    name: str
    size: int
    sha256: str


class Offer(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="op", tag="offer"):
    """The manifest of a release, offered to one device as transfer `t`."""

    t: int
    release: str
    chunk: int
    files: tuple[OfferFile, ...]
    trial_s: int = 300
    max_boots: int = 3


class Abort(msgspec.Struct, frozen=True, tag_field="op", tag="abort"):
    t: int


class OtaAck(msgspec.Struct, frozen=True, omit_defaults=True):
    """A device's answer on `ota_ack`."""

    t: Int64
    op: Text
    file: Int64 | None = None
    offset: Int64 | None = None
    err: Text | None = None
    reason: Text | None = None
    fw: Text | None = None


_encoder = msgspec.json.Encoder()
_ack_decoder = msgspec.json.Decoder(OtaAck)


def encode_offer(offer: Offer | Abort) -> bytes:
    return _encoder.encode(offer)


def chunk_frame(t: int, file_index: int, offset: int, data: bytes) -> bytes:
    """One chunk as the device reads it: an 18-byte header, then the data."""
    digest = hashlib.sha256(data).digest()[:8]
    return CHUNK_HEADER.pack(CHUNK_KIND, t, file_index, offset, digest) + data


def decode_chunk(frame: bytes) -> tuple[int, int, int, bytes]:
    """(t, file index, offset, data) of a chunk frame; ProtocolError if its digest is wrong.

    The device side (simulator); the device in device/planty_ota.py does the same.
    """
    if len(frame) < CHUNK_HEADER.size or frame[0] != CHUNK_KIND:
        raise ProtocolError(ErrorKind.MALFORMED, "not a chunk frame")
    _, t, fi, off, digest = CHUNK_HEADER.unpack_from(frame)
    data = frame[CHUNK_HEADER.size :]
    if hashlib.sha256(data).digest()[:8] != digest:
        raise ProtocolError(ErrorKind.SCHEMA, "chunk digest mismatch")
    return t, fi, off, data


def decode_ota_ack(payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> OtaAck:
    if len(payload) > max_bytes:
        raise ProtocolError(
            ErrorKind.OVERSIZE, f"payload of {len(payload)} bytes exceeds {max_bytes}"
        )
    ack: OtaAck = decode_json(_ack_decoder, payload, "ota_ack")
    if ack.op == "next" and (
        ack.file is None or ack.offset is None or ack.file < 0 or ack.offset < 0
    ):
        raise ProtocolError(ErrorKind.SCHEMA, "ota_ack: next needs file and offset >= 0")
    return ack


def decode_offer(payload: bytes) -> Offer | Abort:
    """The device side (simulator)."""
    try:
        return msgspec.json.decode(payload, type=Offer | Abort)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProtocolError(ErrorKind.SCHEMA, f"ota: {exc}") from None
