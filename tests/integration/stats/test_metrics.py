"""/metrics over the real gateway: the token rule, and figures a Prometheus user would graph."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from planty_broker.app import Gateway
from planty_broker.mqttserver.pki import cert_expiry
from tests.integration.core.conftest import gateway_settings, running_gateway
from tests.integration.stats.conftest import ADMIN, connect, eventually, register

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(api: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await api.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


async def test_metrics_need_the_token_by_default(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.api_url) as anonymous:
        r = await anonymous.get("/metrics")
        assert r.status_code == 401
        assert "planty_" not in r.text


async def test_metrics_follow_the_fleet(api: httpx.AsyncClient, gateway: Gateway) -> None:
    before = await scrape(api)
    creds = await register(api, "met")
    dev = await connect(creds)
    try:
        for seq in range(5):
            dev.publish("telemetry", json.dumps({"seq": seq, "readings": {"light": 1}}).encode())
        dev.publish("telemetry", b"{broken")

        async def grown() -> dict | None:
            m = await scrape(api)
            stored = m[("planty_readings_stored_total", ())]
            err = m[("planty_device_errors_total", (("kind", "malformed_payload"),))]
            base = before[("planty_device_errors_total", (("kind", "malformed_payload"),))]
            ok = stored >= before[("planty_readings_stored_total", ())] + 5 and err == base + 1
            return m if ok else None

        m = await eventually(grown)
        assert m[("planty_devices_connected", ())] >= 1
        assert m[("planty_devices", (("state", "online"),))] >= 1
        assert m[("planty_devices_registered", ())] == len(gateway.services.registry)
        assert m[("planty_mqtt_connected", ())] == 1
        assert m[("planty_store_write_seconds_count", ())] >= 1
        assert (
            m[("planty_store_write_seconds_bucket", (("le", "+Inf"),))]
            == m[("planty_store_write_seconds_count", ())]
        )
        assert ("planty_commands_total", (("state", "acked"),)) in m
        assert ("planty_device_reconnects_total", (("cause", "reboot"),)) in m
        # bounded labels: no device id anywhere by default
        assert not any(dict(labels).get("device") for _, labels in m)
    finally:
        await dev.close()


async def test_token_can_be_waived_and_device_series_capped(tmp_path) -> None:
    settings = gateway_settings(
        tmp_path / "gw", metrics={"require_token": False, "per_device_max": 2}
    )
    async with running_gateway(settings) as gw:
        async with httpx.AsyncClient(
            base_url=gw.api_url, headers={"Authorization": f"Bearer {ADMIN}"}
        ) as api:
            for _ in range(3):
                await register(api, "cap")
        async with httpx.AsyncClient(base_url=gw.api_url) as anonymous:
            r = await anonymous.get("/metrics")
            assert r.status_code == 200
            m = samples(r.text)
            devices = {dict(labels)["device"] for name, labels in m if name == "planty_device_up"}
            assert len(devices) == 2
            # the rest of the API still needs the token
            assert (await anonymous.get("/api/v1/stats")).status_code == 401


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (bin/setup --dev installs it)"
)
async def test_promtool_accepts_every_metric(tmp_path) -> None:
    """Prometheus' own linter on a live /metrics with every family present: base units,
    summaries with quantiles, per-device series, round trips and store writes."""
    settings = gateway_settings(
        tmp_path / "gw", metrics={"require_token": False, "per_device_max": 2}
    )
    async with (
        running_gateway(settings) as gw,
        httpx.AsyncClient(base_url=gw.api_url, headers={"Authorization": f"Bearer {ADMIN}"}) as api,
    ):
        creds = await register(api, "lint")
        dev = await connect(creds)
        try:
            dev.publish("telemetry", json.dumps({"seq": 0, "readings": {"light": 1}}).encode())
            assert gw.services is not None and gw.services.stats is not None
            for ms in (4.0, 12.5, 80.0):
                gw.services.stats.record_rtt(creds["id"], ms)

            async def complete() -> str | None:
                r = await api.get("/metrics")
                text = r.text
                wanted = ("planty_command_rtt_seconds{", "planty_device_rtt_p99_seconds{")
                stored = "planty_store_write_seconds_count" in text
                return text if stored and all(w in text for w in wanted) else None

            text = await eventually(complete)
        finally:
            await dev.close()
    m = samples(text)
    assert m[("planty_command_rtt_seconds", (("quantile", "0.5"),))] == pytest.approx(
        0.0125, rel=0.02
    )
    assert m[("planty_command_rtt_seconds_count", ())] == 3
    assert m[("planty_command_rtt_seconds_sum", ())] == pytest.approx(0.0965)
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_queue_depth_and_consumer_lag(api: httpx.AsyncClient) -> None:
    r = await api.put("/api/v1/consumers/metrics-test/cursor", json={"acked": 0})
    assert r.status_code == 200, r.text
    creds = await register(api, "lag")
    dev = await connect(creds)  # a presence event and readings land in the log
    try:
        dev.publish("telemetry", json.dumps({"seq": 0, "readings": {"light": 1}}).encode())

        async def lagging() -> dict | None:
            m = await scrape(api)
            lag = m.get(("planty_event_consumer_lag", (("consumer", "metrics-test"),)), 0)
            return m if lag >= 2 else None

        m = await eventually(lagging)
        assert m[("planty_event_log_last_id", ())] >= 2
        assert ("planty_command_queue", (("state", "queued"),)) in m
        last = m[("planty_event_log_last_id", ())]
        r = await api.put("/api/v1/consumers/metrics-test/cursor", json={"acked": int(last)})
        assert r.status_code == 200
        m = await scrape(api)
        last_now = m[("planty_event_log_last_id", ())]
        lag = m[("planty_event_consumer_lag", (("consumer", "metrics-test"),))]
        assert lag == last_now - last  # only what came after the confirmed cursor
    finally:
        await dev.close()
        await api.delete("/api/v1/consumers/metrics-test")


async def test_gateway_without_statistics(tmp_path) -> None:
    settings = gateway_settings(tmp_path / "gw", stats={"enabled": False})
    async with (
        running_gateway(settings) as gw,
        httpx.AsyncClient(base_url=gw.api_url, headers={"Authorization": f"Bearer {ADMIN}"}) as api,
    ):
        creds = await register(api, "nostat")
        r = await api.get("/api/v1/stats")
        assert r.status_code == 404 and r.json()["error"]["code"] == "stats_disabled"
        d = (await api.get(f"/api/v1/devices/{creds['id']}")).json()
        assert d["counts"]["messages"] == 0 and "stats" not in d
        m = await scrape(api)
        assert m[("planty_devices_registered", ())] == 1
        assert not any(name.startswith("planty_device_errors") for name, _ in m)
        page = await api.get("/dashboard/fragments/fleet")
        assert page.status_code == 200 and creds["id"] in page.text


async def test_certificate_expiry_is_exported_and_readiness_warns_of_none(
    api: httpx.AsyncClient, gateway: Gateway
) -> None:
    m = await scrape(api)
    server = m[("planty_cert_expiry_timestamp_seconds", (("cert", "server"),))]
    ca = m[("planty_cert_expiry_timestamp_seconds", (("cert", "ca"),))]
    pki = gateway.authority.supervisor.pki  # type: ignore[union-attr]
    assert server == cert_expiry(pki.cert_path).timestamp()  # type: ignore[union-attr]
    assert ca == cert_expiry(pki.ca_cert_path).timestamp()  # type: ignore[union-attr]
    ready = (await api.get("/readyz")).json()
    assert ready["warnings"] == []  # fresh certificates: nothing to warn about
