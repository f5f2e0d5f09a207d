"""One supervised Mosquitto per test module, on free ports, in a throw-away data folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from planty_broker.mqttserver.layout import MosquittoLayout, MqttAccount
from planty_broker.mqttserver.passwords import hash_token, new_token
from planty_broker.mqttserver.supervisor import MosquittoSupervisor
from tests.conftest import free_port
from tests.stale import own

OBSERVER = "planty-observer"  # an extra privileged account, like the bench's


@dataclass
class Server:
    """A running supervised Mosquitto plus the credentials the tests use."""

    supervisor: MosquittoSupervisor
    layout: MosquittoLayout
    tokens: dict[str, str]
    observer_password: str
    hashes: dict[str, str] = field(default_factory=dict)


def make_layout(data_dir: Path, **kw: object) -> MosquittoLayout:
    return MosquittoLayout(
        data_dir=data_dir,
        port=free_port(),
        internal_port=free_port(),
        public_host="localhost",
        **kw,  # type: ignore[arg-type]
    )


def searchable_tmpdir() -> Path:
    """A folder the unprivileged `mosquitto` user can reach (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="planty-mq-", dir="/tmp"))
    own(path)  # a run killed mid-way: the next one stops its Mosquitto (tests/stale.py)
    path.chmod(0o755)
    return path


def provider(users: Mapping[str, str]):  # type: ignore[no-untyped-def]
    async def users_provider() -> Mapping[str, str]:
        return dict(users)

    return users_provider


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[Server]:
    data_dir = searchable_tmpdir()
    tokens = {d: new_token() for d in ("dev-a", "dev-b", "dev-c")}
    hashes = {d: hash_token(t) for d, t in tokens.items()}
    observer_password = new_token()
    layout = make_layout(data_dir, plaintext_loopback_port=free_port())
    supervisor = MosquittoSupervisor(
        layout,
        provider(hashes),
        extra_accounts=[MqttAccount(OBSERVER, hash_token(observer_password))],
    )
    try:
        async with supervisor:
            yield Server(supervisor, layout, tokens, observer_password, hashes)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
