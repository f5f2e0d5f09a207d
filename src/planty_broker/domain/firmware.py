"""Firmware releases and staged rollouts: values and decisions, no I/O (docs/firmware.md).

A release is immutable once stored: a version, and its files each with size and sha256.
A rollout sends one release to a set of devices wave by wave. Per device (a target):

    pending --(online, its turn)--> sending --(status: new fw, t)--> applied
       |                              |--(status: rolled back, t)--> rolled_back
       |                              |--(device gave up / no answer)--> failed
       +--(rollout aborted)--> failed (reason "rollout aborted")

The rollout advances to the next wave when every target of the current one is final or
still waiting for its device to come back; it halts by itself when the failed and
rolled-back targets of a wave pass `threshold` of the wave.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from planty_broker.errors import PlantyError
from planty_broker.protocol import (
    OTA_FILE_NAME_RE as FILE_NAME_RE,
)
from planty_broker.protocol import (
    OTA_MAX_FILES as MAX_FILES,
)
from planty_broker.protocol import (
    OTA_PROTECTED_FILES as PROTECTED_FILES,
)
from planty_broker.protocol import (
    OTA_VERSION_RE as VERSION_RE,
)

FIRMWARE_EVENT_TYPE = "firmware"


class ReleaseError(PlantyError, ValueError):
    """A release that cannot be stored; the message says what to fix."""


class RolloutError(PlantyError, ValueError):
    """A rollout request or admin action that cannot be done; the message says why."""


class TargetState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    APPLIED = "applied"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


FINAL = frozenset({TargetState.APPLIED, TargetState.FAILED, TargetState.ROLLED_BACK})
BAD = frozenset({TargetState.FAILED, TargetState.ROLLED_BACK})


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"  # by itself: a wave failed too much; resume or abort
    ABORTED = "aborted"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class ReleaseFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Release:
    version: str
    files: tuple[ReleaseFile, ...]
    created_ms: int
    notes: str = ""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def make_release(
    version: str, contents: Mapping[str, bytes], at_ms: int, max_bytes: int, notes: str = ""
) -> Release:
    """Check a release's files and compute its manifest; ReleaseError says what is wrong."""
    if not VERSION_RE.fullmatch(version):
        raise ReleaseError(
            f"version {version!r}: 1-32 of A-Z a-z 0-9 . _ + -, starting with a letter or digit"
        )
    if not contents:
        raise ReleaseError("a release needs at least one file")
    if len(contents) > MAX_FILES:
        raise ReleaseError(f"{len(contents)} files: a release holds at most {MAX_FILES}")
    files = []
    for name in sorted(contents):
        if not FILE_NAME_RE.fullmatch(name):
            raise ReleaseError(f"file name {name!r}: a flat name of 1-32 of A-Za-z0-9_.-")
        if name in PROTECTED_FILES:
            raise ReleaseError(
                f"{name} is never updated over the air (the rollback guard and the "
                "credentials); leave it out"
            )
        data = contents[name]
        files.append(ReleaseFile(name, len(data), hashlib.sha256(data).hexdigest()))
    release = Release(version, tuple(files), at_ms, notes[:500])
    if release.size > max_bytes:
        raise ReleaseError(
            f"release is {release.size} bytes; firmware.max_release_bytes is {max_bytes}"
        )
    return release


@dataclass(frozen=True, slots=True)
class Target:
    """One device in one rollout."""

    rollout_id: int
    device_id: str
    wave: int
    state: TargetState = TargetState.PENDING
    reason: str = ""
    updated_ms: int = 0
    progress: int = 0  # bytes the device has confirmed (for display)

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def to(self, state: TargetState, at_ms: int, reason: str = "") -> Target:
        return dataclasses.replace(self, state=state, reason=reason, updated_ms=at_ms)


@dataclass(frozen=True, slots=True)
class Rollout:
    id: int
    version: str
    state: RolloutState
    wave_sizes: tuple[int, ...]
    threshold: float
    created_ms: int
    updated_ms: int
    wave: int = 0  # the wave being sent
    reason: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state in (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.HALTED)

    def to(self, state: RolloutState, at_ms: int, reason: str = "") -> Rollout:
        return dataclasses.replace(self, state=state, reason=reason, updated_ms=at_ms)


def choose_devices(
    known: Sequence[str],
    *,
    devices: Sequence[str] | None = None,
    percent: float | None = None,
    everything: bool = False,
    seed: str = "",
) -> list[str]:
    """The targets of a rollout: named devices, a share of the fleet, or all of it.

    A share is chosen by a hash of (seed, device id), so the same request picks the same
    devices, spread over the fleet rather than the first ones in name order.
    """
    given = sum((devices is not None and len(devices) > 0, percent is not None, everything))
    if given != 1:
        raise RolloutError("say which devices: exactly one of devices, percent or all")
    if devices:
        unknown = sorted(set(devices) - set(known))
        if unknown:
            raise RolloutError(f"unknown devices: {', '.join(unknown[:10])}")
        return list(dict.fromkeys(devices))
    if everything:
        return sorted(known)
    assert percent is not None
    if not 0 < percent <= 100:
        raise RolloutError("percent must be above 0 and at most 100")
    count = max(1, math.ceil(len(known) * percent / 100)) if known else 0
    ranked = sorted(known, key=lambda d: hashlib.sha256(f"{seed}:{d}".encode()).digest())
    return sorted(ranked[:count])


def plan_waves(count: int, first: int | None = None, growth: float = 2.0) -> tuple[int, ...]:
    """Wave sizes: `first` (10 % of the targets, at least 1), then each `growth` times the last."""
    if count <= 0:
        return ()
    size = first if first is not None else max(1, math.ceil(count / 10))
    if size < 1:
        raise RolloutError("the first wave needs at least one device")
    sizes: list[int] = []
    left = count
    while left > 0:
        n = min(size, left)
        sizes.append(n)
        left -= n
        size = max(size + 1, math.ceil(size * growth))
    return tuple(sizes)


def assign_waves(devices: Sequence[str], sizes: Sequence[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    i = 0
    for wave, n in enumerate(sizes):
        for d in devices[i : i + n]:
            out[d] = wave
        i += n
    return out


@dataclass(frozen=True, slots=True)
class WaveVerdict:
    """What a wave's targets say: go on, wait, or halt (with the reason)."""

    advance: bool
    halt: str | None


def judge_wave(
    rollout: Rollout, targets: Iterable[Target], online: Mapping[str, bool]
) -> WaveVerdict:
    """Halt as soon as the bad share is certain to pass the threshold; advance once every
    target is final or its device is away (it gets the update when it returns)."""
    wave = [t for t in targets if t.wave == rollout.wave]
    if not wave:
        return WaveVerdict(advance=True, halt=None)
    bad = sum(1 for t in wave if t.state in BAD)
    if bad / len(wave) > rollout.threshold:
        return WaveVerdict(
            advance=False,
            halt=(
                f"wave {rollout.wave + 1}: {bad} of {len(wave)} failed or rolled back "
                f"(more than {rollout.threshold:.0%})"
            ),
        )
    settled = all(
        t.final or (t.state is TargetState.PENDING and not online.get(t.device_id, False))
        for t in wave
    )
    return WaveVerdict(advance=settled, halt=None)
