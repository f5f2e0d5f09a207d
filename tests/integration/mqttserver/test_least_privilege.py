"""Least privilege by default (issue 13): a gateway started as root runs Mosquitto as the
`mosquitto` user with only the files it needs, in a folder it can enter, and every secret and
the store are 0600. Real Mosquitto, real processes (`ps`), real file modes."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from planty_broker.mqttserver.passwords import hash_token, new_token
from planty_broker.mqttserver.process import FALLBACK_MARKER, FALLBACK_ROOT, fallback_directory
from planty_broker.mqttserver.supervisor import MosquittoSupervisor
from planty_broker.storage.sql import SqlStore
from tests.conftest import remove_mosquitto_fallbacks
from tests.integration.core.conftest import gateway_settings, running_gateway
from tests.integration.mqttserver.conftest import make_layout, provider, searchable_tmpdir

pytestmark = pytest.mark.integration

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the tests run as root here)")


async def process_user(pid: int) -> str:
    ps = await asyncio.create_subprocess_exec(
        "ps", "-o", "user=", "-p", str(pid), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await ps.communicate()
    return out.decode().strip()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def mosquitto_uid() -> int:
    return pwd.getpwnam("mosquitto").pw_uid


@pytest.fixture
async def searchable() -> AsyncIterator[Path]:
    path = searchable_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@as_root
async def test_as_root_mosquitto_runs_as_mosquitto_with_only_its_own_files(
    searchable: Path,
) -> None:
    layout = make_layout(searchable, x509_port=0, pick_x509=True)
    hashes = {"dev-a": hash_token(new_token())}
    async with MosquittoSupervisor(layout, provider(hashes)) as mqtt:
        assert mqtt.pid is not None
        assert await process_user(mqtt.pid) == "mosquitto"
        d = mqtt.layout.directory
        assert d == searchable / "mosquitto"
        assert d.stat().st_uid == mosquitto_uid() and mode(d) == 0o700
        names = {p.name for p in d.iterdir()}
        assert {"server.pem", "server.key", "ca.pem", "passwd", "acl", "mosquitto.conf"} <= names
        assert not any(n.endswith("ca.key") for n in names)  # never the CA key
        for name in ("server.key", "passwd", "acl", "mosquitto.conf", "revoked.crl.pem"):
            p = d / name
            assert mode(p) == 0o600 and p.stat().st_uid == mosquitto_uid(), name
        pki = mqtt.pki
        assert mode(pki.directory) == 0o700 and pki.directory.stat().st_uid == 0
        for key in (pki.ca_key_path, pki.key_path):
            assert mode(key) == 0o600 and key.stat().st_uid == 0


@as_root
async def test_a_data_folder_mosquitto_cannot_enter_gets_a_fallback_folder(
    tmp_path: Path,
) -> None:
    """pytest's tmp_path is under /tmp/pytest-of-root (0700), like a data folder under /root."""
    data_dir = tmp_path / "data"
    layout = make_layout(data_dir)
    async with MosquittoSupervisor(layout, provider({})) as mqtt:
        assert mqtt.pid is not None
        assert await process_user(mqtt.pid) == "mosquitto"
        d = mqtt.layout.directory
        assert d.parent == FALLBACK_ROOT and mode(d) == 0o700
        assert d.stat().st_uid == mosquitto_uid()
        assert (d / FALLBACK_MARKER).read_text().strip() == str(data_dir.resolve())
        assert mqtt.layout.log_path.exists()  # it writes its log there, as `mosquitto`
    # The same data folder gets the same Mosquitto folder (persistence, adoption).
    async with MosquittoSupervisor(make_layout(data_dir), provider({})) as again:
        assert again.layout.directory == d
    # what the suite's fixture does; it also clears folders of data folders gone meanwhile
    # (another xdist worker's finished test, a killed run), so `d` is one of those removed
    assert d in remove_mosquitto_fallbacks(tmp_path)
    assert not d.exists()


async def test_the_store_and_its_wal_are_0600_even_when_they_were_not(tmp_path: Path) -> None:
    db = tmp_path / "planty.sqlite3"
    async with SqlStore(f"sqlite:///{db}") as store:
        await store.set_meta("k", 1)
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert mode(p) == 0o600, p
    db.chmod(0o644)  # a store made by an older version
    async with SqlStore(f"sqlite:///{db}") as store:
        await store.set_meta("k", 2)
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert mode(p) == 0o600, p


async def test_every_secret_and_the_store_of_a_running_gateway_are_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "mqtt-gateway.secret").write_text(new_token() + "\n")  # an older, 0644 one
    (data_dir / "mqtt-gateway.secret").chmod(0o644)
    settings = gateway_settings(data_dir, gateway={"admin_token": ""})  # it makes one
    async with running_gateway(settings) as gw:
        assert gw.admin_token
        secrets = [
            data_dir / "admin-token",
            data_dir / "mqtt-gateway.secret",
            data_dir / "mqtt-claim.secret",
            data_dir / "pki" / "ca.key",
            data_dir / "pki" / "server.key",
            data_dir / "planty.sqlite3",
            data_dir / "planty.sqlite3-wal",
            data_dir / "planty.sqlite3-shm",
        ]
        for p in secrets:
            assert p.exists() and mode(p) == 0o600, p
        assert mode(data_dir / "pki") == 0o700
        own = data_dir / "mosquitto"
        mosquitto_dir = own if own.exists() else fallback_directory(data_dir)
        assert mode(mosquitto_dir) == 0o700  # the pid file and log inside are its own
        for name in ("server.key", "server.pem", "passwd", "acl", "mosquitto.conf"):
            assert mode(mosquitto_dir / name) == 0o600, name
