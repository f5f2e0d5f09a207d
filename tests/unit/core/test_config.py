"""Settings: file + environment + CLI overrides; one clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from planty_broker.config import ConfigError, load_settings


def test_defaults_do_not_collide_with_common_services() -> None:
    s = load_settings(env={})
    taken = {1883, 5432, 6379, 4222, 3306, 5672}
    assert {s.api.port, s.mqtt.port, s.mqtt.internal_port}.isdisjoint(taken)
    assert s.api.host == "127.0.0.1" and s.api.port == 8080 and s.mqtt.port == 8883
    assert s.mqtt.max_queued_messages > 1000
    assert s.store_url().startswith("sqlite:///") and s.store_url().endswith("planty.sqlite3")


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "planty.toml"
    f.write_text("[api]\nport = 9000\n[mqtt]\nkeepalive_s = 30\n")
    s = load_settings(f, env={"PLANTY_API_PORT": "9100", "PLANTY_DATA_DIR": str(tmp_path)})
    assert s.api.port == 9100 and s.mqtt.keepalive_s == 30 and s.data_dir == tmp_path.resolve()
    s = load_settings(f, env={"PLANTY_API_PORT": "9100"}, overrides={"api": {"port": 9200}})
    assert s.api.port == 9200


def test_the_test_suites_variables_are_not_settings() -> None:
    # bin/test's PLANTY_TEST_WORKERS and the test PostgreSQL's PLANTY_TEST_POSTGRES_URL are
    # inherited by every gateway the tests start; they must not stop its start
    env = {"PLANTY_TEST_WORKERS": "4", "PLANTY_TEST_POSTGRES_URL": "postgresql://x/y"}
    assert load_settings(env=env) == load_settings(env={})


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PLANTY_API_PORT": "70000"}, "api.port"),
        ({"PLANTY_API_PORT": "eighty"}, "api.port"),
        ({"PLANTY_MQTT_KEEPALIVE_S": "0"}, "mqtt.keepalive_s"),
        ({"PLANTY_NOPE_X": "1"}, "PLANTY_NOPE_X"),
        ({"PLANTY_MQTT_TOPIC_PREFIX": "a/#"}, "mqtt.topic_prefix"),
        ({"PLANTY_MQTT_URL": "http://x"}, "mqtt.url"),
        ({"PLANTY_API_PORT": "8883"}, "api.port"),
        ({"PLANTY_LOG_LEVEL": "loud"}, "log.level"),
        ({"PLANTY_API_BOGUS": "1"}, "bogus"),
    ],
)
def test_bad_values_name_the_key_in_one_line(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(env=env)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and msg.startswith("config:")


def test_missing_and_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[api\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})
