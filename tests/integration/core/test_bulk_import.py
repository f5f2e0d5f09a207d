"""Bulk import (issue 17): POST /api/v1/devices/import and `planty devices import FILE`
register many devices with one Mosquitto reload per batch; bad rows are reported one by
one and change nothing; every returned token logs in over TLS at once."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import httpx
import pytest

from planty_broker.app import Gateway
from planty_broker.mqttserver.authority import MosquittoAuthority
from tests.integration.core.conftest import ADMIN, eventually
from tests.integration.core.test_cli import planty
from tests.integration.identity.conftest import tls, try_login

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def api(gw: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gw.api_url + "/api/v1", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60
    )


async def test_import_registers_the_good_rows_with_one_reload(gateway: Gateway) -> None:
    prefix = f"im{uuid.uuid4().hex[:5]}"
    good = [{"id": f"{prefix}-{n:04d}", "name": f"Pot {n}"} for n in range(300)]
    good[3]["profile"] = "pot"
    async with api(gateway) as client:
        taken = f"{prefix}-taken"
        assert (await client.post("/devices", json={"id": taken})).status_code == 201
        rows = [
            *good[:150],
            {"id": "Bad Id"},  # 150
            {"id": good[0]["id"]},  # 151: twice in the batch
            {"id": taken},  # 152: already registered
            {"id": f"{prefix}-x1", "sensors": ["no spaces allowed"]},  # 153
            "not an object",  # 154
            {"id": f"{prefix}-x2", "colour": "red"},  # 155: unknown field
            {"id": f"{prefix}-x3", "profile": "spaceship"},  # 156
            *good[150:],
        ]
        authority = gateway.authority
        assert isinstance(authority, MosquittoAuthority)
        before = authority.reloads
        r = await client.post("/devices/import", json=rows)
        assert r.status_code == 200, r.text
        body = r.json()
        assert authority.reloads - before == 1  # one reload for the batch
        assert body["imported"] == 300 and body["failed"] == 7
        assert [e["row"] for e in body["errors"]] == list(range(150, 157))
        codes = [e["code"] for e in body["errors"]]
        assert codes == [
            "invalid_device_id",
            "duplicate_in_batch",
            "device_exists",
            "invalid_declaration",
            "invalid",
            "invalid",
            "unknown_profile",
        ]
        assert "colour" in body["errors"][5]["message"]
        assert [d["id"] for d in body["devices"]] == [g["id"] for g in good]
        assert body["devices"][150]["row"] == 157

        # the refused rows changed nothing; the good ones are there with what they declared
        listed = (await client.get("/devices", params={"q": prefix, "limit": 1000})).json()
        assert listed["count"] == 301  # 300 + the one registered before
        pot = (await client.get(f"/devices/{good[3]['id']}")).json()
        assert pot["name"] == "Pot 3" and pot["actuators"]

        # every token works at once over TLS, and is a tracked credential
        m = body["mqtt"]
        ctx = tls(m["ca_pem"])
        for d in (body["devices"][0], body["devices"][-1]):
            assert await try_login(m["host"], m["port"], ctx, d["id"], d["token"]) == "accepted"

        async def tracked() -> bool:
            r = await client.get(f"/devices/{good[-1]['id']}/credentials")
            return any(c["type"] == "token" for c in r.json()["credentials"])

        await eventually(tracked, timeout=20)

        # bounds: more than 10,000 rows is one clear 422
        r = await client.post("/devices/import", json=[{"id": "x"}] * 10_001)
        assert r.status_code == 422


async def test_cli_imports_csv_and_json(gateway: Gateway, tmp_path: Path) -> None:
    prefix = f"ic{uuid.uuid4().hex[:5]}"
    csv_file = tmp_path / "fleet.csv"
    csv_file.write_text(
        "id,name,sensors,actuators\n"
        f"{prefix}-a,Kitchen,temperature;soil_moisture,pump\n"
        f"{prefix}-b,,,\n"
        "Not Valid,,,\n"
        f"{prefix}-c,Balcony,light,\n"
    )
    out = tmp_path / "tokens.csv"
    r = await planty(
        "devices", "import", str(csv_file), "--out", str(out), "--url", gateway.api_url
    )
    assert r.returncode == 1, r.stdout + r.stderr  # one row refused
    assert "line 4" in r.stderr and "Not Valid" in r.stderr
    assert "3 devices imported, 1 rows refused" in r.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    lines = out.read_text().splitlines()
    assert lines[0] == "id,token" and [line.split(",")[0] for line in lines[1:]] == [
        f"{prefix}-a",
        f"{prefix}-b",
        f"{prefix}-c",
    ]
    async with api(gateway) as client:
        a = (await client.get(f"/devices/{prefix}-a")).json()
    assert a["name"] == "Kitchen" and a["sensors"] == ["temperature", "soil_moisture"]

    json_file = tmp_path / "more.json"
    json_file.write_text(json.dumps([{"id": f"{prefix}-d"}, {"id": f"{prefix}-e"}]))
    r = await planty("devices", "import", str(json_file), "--url", gateway.api_url)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert [d["id"] for d in shown["devices"]] == [f"{prefix}-d", f"{prefix}-e"]
    assert all(d["token"] for d in shown["devices"]) and "shown only once" in r.stderr
