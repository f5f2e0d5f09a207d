"""Releases, waves, target choice, halting, and the update codec: pure, fast."""

from __future__ import annotations

import hashlib

import pytest

from planty_broker.domain.firmware import (
    ReleaseError,
    Rollout,
    RolloutError,
    RolloutState,
    Target,
    TargetState,
    choose_devices,
    judge_wave,
    make_release,
    plan_waves,
)
from planty_broker.protocol import ProtocolError
from planty_broker.protocol_ota import (
    Abort,
    Offer,
    OfferFile,
    chunk_frame,
    decode_chunk,
    decode_offer,
    decode_ota_ack,
    encode_offer,
)
from planty_broker.simulator.ota import OtaReceiver


def test_a_release_gets_a_sha256_manifest_and_refuses_what_a_device_would() -> None:
    rel = make_release("1.3.0", {"main.py": b"x", "lib.mpy": b"yy"}, 5, 1000, "n")
    assert [(f.name, f.size) for f in rel.files] == [("lib.mpy", 2), ("main.py", 1)]
    assert rel.files[1].sha256 == hashlib.sha256(b"x").hexdigest()
    for version, files, why in [
        ("1.3.0", {"boot.py": b"x"}, "never updated over the air"),
        ("1.3.0", {"secrets.json": b"x"}, "never updated over the air"),
        ("1.3.0", {"lib/x.py": b"x"}, "flat name"),
        ("1.3.0", {".hidden": b"x"}, "flat name"),
        ("1.3.0", {}, "at least one file"),
        ("../1", {"main.py": b"x"}, "version"),
        ("1.3.0", {"main.py": b"x" * 2000}, "max_release_bytes"),
        ("1.3.0", {f"f{i}.py": b"" for i in range(17)}, "at most 16"),
    ]:
        with pytest.raises(ReleaseError, match=why):
            make_release(version, files, 5, 1000)


def test_waves_start_small_and_double() -> None:
    assert plan_waves(20, 2) == (2, 4, 8, 6)
    assert plan_waves(20) == (2, 4, 8, 6)  # 10 % first
    assert plan_waves(1) == (1,)
    assert plan_waves(5, 1) == (1, 2, 2)
    assert plan_waves(0) == ()
    assert sum(plan_waves(1000)) == 1000


def test_a_share_of_the_fleet_is_spread_and_stable() -> None:
    known = [f"d{i:03d}" for i in range(100)]
    ten = choose_devices(known, percent=10, seed="1.3.0")
    assert len(ten) == 10 and ten == choose_devices(known, percent=10, seed="1.3.0")
    assert ten != known[:10]
    assert choose_devices(known, percent=0.1) and len(choose_devices(known, everything=True)) == 100
    assert choose_devices(known, devices=["d001", "d001", "d002"]) == ["d001", "d002"]
    with pytest.raises(RolloutError, match="unknown devices: nope"):
        choose_devices(known, devices=["nope"])
    with pytest.raises(RolloutError, match="exactly one"):
        choose_devices(known, percent=5, everything=True)
    with pytest.raises(RolloutError, match="percent"):
        choose_devices(known, percent=150)


def _rollout(wave: int = 0) -> Rollout:
    return Rollout(1, "1.3.0", RolloutState.RUNNING, (2, 4), 0.2, 0, 0, wave=wave)


def test_a_wave_halts_at_its_first_failure_past_the_threshold_and_waits_for_the_away() -> None:
    t = [Target(1, "a", 0), Target(1, "b", 0), Target(1, "c", 1)]
    online = {"a": True, "b": True, "c": True}
    assert judge_wave(_rollout(), t, online).advance is False  # pending and online: not yet
    done = [t[0].to(TargetState.APPLIED, 1), t[1].to(TargetState.APPLIED, 1), t[2]]
    assert judge_wave(_rollout(), done, online).advance is True
    away = [t[0].to(TargetState.APPLIED, 1), t[1], t[2]]
    assert judge_wave(_rollout(), away, {"b": False}).advance is True  # b gets it on return
    bad = [t[0].to(TargetState.ROLLED_BACK, 1, "x"), t[1].to(TargetState.SENDING, 1), t[2]]
    verdict = judge_wave(_rollout(), bad, online)
    assert verdict.halt == "wave 1: 1 of 2 failed or rolled back (more than 20%)"
    tolerant = Rollout(1, "1.3.0", RolloutState.RUNNING, (2,), 0.5, 0, 0)
    assert judge_wave(tolerant, bad, online).halt is None


def test_the_codec_and_the_simulated_device_speak_the_same_wire() -> None:
    data = b"print('hello')\n" * 200
    sha = hashlib.sha256(data).hexdigest()
    offer = Offer(t=7, release="1.3.0", chunk=1024, files=(OfferFile("main.py", len(data), sha),))
    raw = encode_offer(offer)
    assert raw.startswith(b'{"op":"offer","t":7')
    assert decode_offer(raw) == offer and decode_offer(encode_offer(Abort(7))) == Abort(7)
    dev = OtaReceiver("1.0.0")
    (reply,) = dev.receive(raw)
    ack = decode_ota_ack(reply)
    sent = 0
    corrupted = False
    while ack.op == "next":
        assert ack.file == 0 and ack.offset is not None
        frame = chunk_frame(7, 0, ack.offset, data[ack.offset : ack.offset + 1024])
        if ack.offset == 1024 and not corrupted:
            corrupted = True
            frame = frame[:-1] + bytes([frame[-1] ^ 1])
        sent += 1
        (reply,) = dev.receive(frame)
        ack = decode_ota_ack(reply)
        if corrupted and sent == 2:
            assert ack.err == "digest" and ack.offset == 1024  # refused, asked for again
    assert ack.op == "staged" and sent == 4
    assert dev.staged is not None and dev.staged.files == {"main.py": data}
    with pytest.raises(ProtocolError):
        decode_chunk(b"\x01short")
    with pytest.raises(ProtocolError, match="next needs file and offset"):
        decode_ota_ack(b'{"t": 7, "op": "next"}')
