"""main.py, the example board firmware, on the shims: sensors scale right, the pump is bounded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ds18x20
import machine
import main
import network
import planty_device
import pytest

SECRETS = {
    "wifi": {"ssid": "greenhouse", "password": "pw"},
    "device_id": "plant-main-1",
    "token": "t" * 43,
    "mqtt": {"host": "gw.local", "port": 8883, "ca_pem": None},
}


@pytest.fixture
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.chdir(tmp_path)  # the board's flash: state files land here
    machine.Pin.levels.clear()
    machine.ADC.raw.clear()
    return dict(main.CONFIG)


def _ack(dev: Any, action: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    cmd = {"id": "c-" + action + json.dumps(args), "action": action, "args": args or {}}
    raw = dev.cmds.handle(json.dumps(cmd).encode(), dev.now_ms())
    return json.loads(raw)  # type: ignore[no-any-return]


def test_readings_come_out_in_protocol_units(board: dict[str, Any]) -> None:
    dev = main.build(SECRETS, board, network.WLAN(network.STA_IF))
    ds18x20.celsius = 23.456
    machine.ADC.raw[board["soil_pin"]] = (board["soil_dry"] + board["soil_wet"]) // 2
    machine.ADC.raw[board["ldr_pin"]] = 32768  # LDR equal to the fixed resistor: 10 kOhm
    readings = dev.read()
    assert readings["soil_moisture"] == pytest.approx(0.5, abs=0.001)
    assert readings["temperature"] == 23.46
    assert 10 < readings["light"] < 30  # 10 kOhm is a bit brighter than 10 lux on a GL5528
    machine.ADC.raw[board["soil_pin"]] = 65535  # drier than dry: clamped
    machine.ADC.raw[board["ldr_pin"]] = 65000  # bright
    readings = dev.read()
    assert readings["soil_moisture"] == 0.0
    assert readings["light"] > 1000


def test_without_a_ds18b20_the_chip_temperature_is_reported_under_its_own_name(
    board: dict[str, Any],
) -> None:
    board["onewire_pin"] = None
    dev = main.build(SECRETS, board)
    readings = dev.read()
    assert "temperature" not in readings
    assert readings["chip_temperature"] == 41


def test_pump_relay_is_active_low_needs_seconds_and_stops_by_itself(board: dict[str, Any]) -> None:
    dev = main.build(SECRETS, board)
    pin = board["pump_pin"]
    assert machine.Pin.levels[pin] == 1  # off at boot (active low)
    assert _ack(dev, "pump.on")["error"] == "pump.on needs seconds, at most 120"
    assert _ack(dev, "pump.on", {"seconds": 500})["ok"] is False
    assert machine.Pin.levels[pin] == 1
    assert _ack(dev, "pump.on", {"seconds": 0.05})["ok"] is True
    assert machine.Pin.levels[pin] == 0
    import time

    time.sleep(0.1)
    dev.cmds.tick(time.ticks_ms())  # type: ignore[attr-defined]
    assert machine.Pin.levels[pin] == 1


def test_secrets_file_problems_are_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    with pytest.raises(ValueError, match=r"no .*secrets\.json on the board"):
        planty_device.load_secrets(str(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        planty_device.load_secrets(str(path))
    path.write_text(json.dumps({**SECRETS, "token": ""}))
    with pytest.raises(ValueError, match="lacks token"):
        planty_device.load_secrets(str(path))
    path.write_text(json.dumps({**SECRETS, "mqtt": {"host": "gw.local", "port": 8883}}))
    with pytest.raises(ValueError, match=r"lacks mqtt\.ca_pem"):
        planty_device.load_secrets(str(path))


def test_the_secrets_example_in_the_firmware_doc_is_what_the_board_reads(tmp_path: Path) -> None:
    """docs/firmware.md is the contract the CLI's --export-device-config writes to."""
    doc = (Path(__file__).parent.parent.parent / "docs" / "firmware.md").read_text()
    block = doc.split("```json\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "secrets.json"
    path.write_text(block)
    secrets = planty_device.load_secrets(str(path))
    assert set(secrets) == {"wifi", "device_id", "token", "mqtt"}
    assert set(secrets["mqtt"]) == {"host", "port", "ca_pem"}
    assert secrets["mqtt"]["port"] == 8883
