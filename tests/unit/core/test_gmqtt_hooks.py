"""Fails loudly when a gmqtt upgrade moves an internal that `transport/gmqtt_hooks.py` uses.

pyproject.toml allows gmqtt >=0.8,<0.9; if one of these breaks, fix `gmqtt_hooks.py`
(and only it) for the new version, or narrow the range.
"""

from __future__ import annotations

import inspect

import gmqtt
from gmqtt.mqtt.connection import MQTTConnection
from gmqtt.mqtt.handler import MqttPackageHandler
from gmqtt.storage import PersistentStorage

from planty_broker.transport.gmqtt_hooks import QosStorage, puback_for, take_over_qos1


def _params(fn: object) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]  # type: ignore[arg-type]


def test_the_qos1_handler_we_replace_is_still_there_with_its_arguments() -> None:
    assert _params(MqttPackageHandler._handle_qos_1_publish_packet) == [
        "mid",
        "packet",
        "print_topic",
        "properties",
    ]
    source = inspect.getsource(MqttPackageHandler._handle_publish_packet)
    assert "self._handle_qos_1_publish_packet(mid, packet, print_topic, properties)" in source


def test_a_client_has_the_handler_and_connection_we_use() -> None:
    client = gmqtt.Client("hooks-test")
    assert isinstance(client._package_handler, MqttPackageHandler)
    assert client._connection is None  # until connected
    assert _params(MqttPackageHandler._send_puback)[:1] == ["mid"]
    got: list[int] = []
    take_over_qos1(client, lambda mid, payload, topic, props: got.append(mid))
    client._package_handler._handle_qos_1_publish_packet(7, b"x", "t", {})
    assert got == [7]
    puback_for(client, 7)()  # no connection: does nothing, raises nothing


def test_the_connection_internals_the_simulator_aborts_exist() -> None:
    init = inspect.getsource(MQTTConnection.__init__)
    assert "self._transport = transport" in init
    assert "self._keep_connection_callback" in init
    assert callable(MQTTConnection.is_closing)


def test_the_qos_storage_hooks_see_push_ack_and_clear() -> None:
    seen: list[tuple[str, int]] = []

    class Spy(QosStorage):
        def on_push(self, mid: int) -> None:
            seen.append(("push", mid))

        def on_acked(self, mid: int) -> None:
            seen.append(("acked", mid))

        def on_clear(self) -> None:
            seen.append(("clear", 0))

    store = Spy()
    assert isinstance(store, PersistentStorage)
    store.push_message(1, b"a")
    store.push_message(2, b"b")
    assert len(store) == 2 and isinstance(store._messages, dict)
    store.remove_message_by_mid(1)
    store.clear()
    assert seen == [("push", 1), ("push", 2), ("acked", 1), ("clear", 0)] and len(store) == 0


def test_the_client_keeps_our_storage_even_while_it_is_empty() -> None:
    store = QosStorage()
    client = gmqtt.Client("hooks-storage", persistent_storage=store)
    assert client._persistent_storage is store


def test_reconnect_is_the_coroutine_gmqtt_calls() -> None:
    assert inspect.iscoroutinefunction(gmqtt.Client.reconnect)
    assert _params(gmqtt.Client.reconnect) == ["delay"]
