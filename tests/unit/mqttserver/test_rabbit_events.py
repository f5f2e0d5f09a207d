"""RabbitMQ's events as the lease holder reads them (`mqttserver/rabbit_events.py`): the
headers below are what RabbitMQ 3.10.8 (Debian 12) sent on 2026-12-04 for an MQTT login,
a session takeover by client id and refused logins (recorded from a private node)."""

from __future__ import annotations

import asyncio
from typing import Any

from planty_broker.mqttserver.rabbit_events import (
    MAX_CLOSING,
    REASON,
    MqttConnection,
    RabbitEventWatch,
    client_id_of,
    parse_event,
)
from planty_broker.ports.device_authority import AcceptedLogin, LoginEvent, RefusedLogin


def created(user: str, client_id: str, port: int = 39442) -> dict[str, Any]:
    return {
        "ssl": True,
        "client_properties": [],
        "variable_map": f'#{{<<"client_id">> => <<"{client_id}">>}}',
        "user_who_performed_action": user,
        "node": "planty56053-0@localhost",
        "type": "direct",
        "vhost": "/",
        "user": user,
        "peer_port": port,
        "peer_host": "{127,0,0,1}",
        "name": f"127.0.0.1:{port} -> 127.0.0.1:60185",
        "port": 60185,
        "host": "{127,0,0,1}",
        "protocol": "{'MQTT',\"3.1.1\"}",
        "pid": "<planty56053-0@localhost.1796396025.1087.0>",
        "timestamp_in_ms": 1796396170538,
    }


AMQP_CREATED = {
    "user": "planty-admin",
    "name": "127.0.0.1:39074 -> 127.0.0.1:56053",
    "protocol": "{0,9,1}",
    "peer_host": "{127,0,0,1}",
    "type": "network",
}
REFUSED = {
    "error": list(b"user 'dev-a' - invalid credentials"),
    "name": "dev-a",
    "connection_type": "direct",
    "timestamp_in_ms": 1796396174564,
}


def test_an_mqtt_connection_gives_user_client_id_and_address() -> None:
    event = parse_event("connection.created", created("dev-b", "dev-a", 39450))
    assert event == MqttConnection(
        "127.0.0.1:39450 -> 127.0.0.1:60185", "dev-b", "dev-a", "127.0.0.1"
    )


def test_other_connections_and_logins_are_not_ours() -> None:
    assert parse_event("connection.created", AMQP_CREATED) is None
    assert (
        parse_event("user.authentication.failure", {**REFUSED, "connection_type": "network"})
        is None
    )
    assert parse_event("user.created", {"name": "dev-a"}) is None


def test_a_refused_mqtt_login_names_the_username_it_tried() -> None:
    assert parse_event("user.authentication.failure", REFUSED) == RefusedLogin(
        "not_authorised", None, "token", "dev-a"
    )


def test_client_ids_in_the_forms_an_erlang_map_is_printed_in() -> None:
    assert client_id_of('#{<<"client_id">> => <<"dev-a">>}') == "dev-a"
    assert client_id_of('#{<<"client_id">> => <<"d\\"q">>}') == 'd"q'
    assert client_id_of('#{<<"client_id">> => <<"caf\\303\\251"/utf8>>}') is not None
    assert client_id_of('#{<<"client_id">> => <<100,101,118>>}') == "dev"
    assert client_id_of({"client_id": b"dev-a"}) == "dev-a"
    assert client_id_of("#{}") is None
    assert client_id_of(None) is None


class Watch:
    def __init__(self) -> None:
        self.reported: list[LoginEvent] = []
        self.closes: list[tuple[str, str]] = []
        self.release = asyncio.Event()
        self.release.set()

        async def close(user: str, reason: str) -> None:
            await self.release.wait()
            self.closes.append((user, reason))

        self.watch = RabbitEventWatch(["amqp://x@127.0.0.1:1/"], self.reported.append, close)


async def test_a_client_id_other_than_the_username_closes_that_users_connections() -> None:
    w = Watch()
    w.watch.handle("connection.created", created("dev-a", "dev-a"))
    w.watch.handle("connection.created", created("planty-claim-3", "planty-claim-3"))
    w.watch.handle("connection.created", created("dev-b", "dev-a", 39450))
    await asyncio.sleep(0)
    assert w.closes == [("dev-b", REASON)]
    assert w.reported == [
        AcceptedLogin("dev-a", "127.0.0.1", "token"),
        AcceptedLogin("planty-claim-3", "127.0.0.1", "token"),
        AcceptedLogin("dev-b", "127.0.0.1", "token"),
    ]
    assert w.watch.closed == 1


async def test_malformed_events_are_counted_and_the_next_one_is_handled() -> None:
    w = Watch()
    bad: list[tuple[str, Any]] = [
        ("connection.created", {"protocol": "{'MQTT',\"3.1.1\"}"}),  # no user, no name
        ("connection.created", {"protocol": "{'MQTT',\"3.1.1\"}", "user": 5, "name": object()}),
        ("user.authentication.failure", None),
        ("connection.created", "not a table"),
    ]
    for key, headers in bad:
        w.watch.handle(key, headers)
    w.watch.handle("user.authentication.failure", REFUSED)
    assert w.watch.malformed >= 3 and w.watch.events == 5
    assert w.reported[-1] == RefusedLogin("not_authorised", None, "token", "dev-a")


async def test_closes_at_once_are_bounded_and_one_more_for_a_user_back_meanwhile() -> None:
    w = Watch()
    w.release.clear()
    for n in range(MAX_CLOSING + 10):
        w.watch.handle("connection.created", created(f"dev-{n}", "victim", 40000 + n))
    w.watch.handle("connection.created", created("dev-1", "victim", 50000))  # not begun yet
    await asyncio.sleep(0)  # the closes begin (and wait)
    # dev-0 connects again while its close runs (it may have listed its connections before)
    w.watch.handle("connection.created", created("dev-0", "victim", 50001))
    w.watch.handle("connection.created", created("dev-0", "victim", 50002))
    assert w.watch.not_closed == 10
    w.release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(w.closes) == MAX_CLOSING + 1 == w.watch.closed
    assert [u for u, _ in w.closes].count("dev-0") == 2
    await w.watch.stop()
