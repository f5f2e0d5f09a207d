"""Mosquitto log lines -> login events; following the log file across rotation."""

from __future__ import annotations

from pathlib import Path

from planty_broker.mqttserver.login_watch import (
    LoginAccepted,
    LoginLogParser,
    LoginRefused,
    LogTail,
)

T = "2026-11-28T12:00:00: "


def feed(lines: list[str]) -> list[object]:
    parser = LoginLogParser(clock=lambda: 0.0)
    return [e for line in lines if (e := parser.feed(T + line)) is not None]


def test_an_accepted_login_names_user_address_and_listener() -> None:
    events = feed(
        [
            "New connection from 10.0.0.7:51234 on port 8883.",
            "New client connected from 10.0.0.7:51234 as dev-a (p2, c1, k60, u'dev-a').",
        ]
    )
    assert events == [LoginAccepted("dev-a", "10.0.0.7", 8883)]


def test_a_refused_password_is_paired_with_the_oldest_waiting_connection() -> None:
    events = feed(
        [
            "New connection from 10.0.0.8:4000 on port 8883.",
            "New connection from 10.0.0.9:4001 on port 8884.",
            "Client <unknown> disconnected, not authorised.",
            "New client connected from 10.0.0.9:4001 as dev-b (p2, c1, k60, u'dev-b').",
        ]
    )
    assert events == [
        LoginRefused("not_authorised", "10.0.0.8", 8883),
        LoginAccepted("dev-b", "10.0.0.9", 8884),
    ]


def test_a_refused_certificate_carries_the_tls_reason() -> None:
    events = feed(
        [
            "New connection from [::1]:5000 on port 8884.",
            "OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed",
            "Client <unknown> disconnected: Protocol error.",
            "New connection from 127.0.0.1:5001 on port 8884.",
            "OpenSSL Error[0]: error:0A0000C7:SSL routines::peer did not return a certificate",
            "Client <unknown> disconnected: Protocol error.",
        ]
    )
    assert events == [
        LoginRefused("tls: certificate verify failed", "::1", 8884),
        LoginRefused("tls: peer did not return a certificate", "127.0.0.1", 8884),
    ]


def test_other_lines_and_named_disconnects_are_not_logins() -> None:
    events = feed(
        [
            "mosquitto version 2.0.11 running",
            "Client dev-a disconnected, not authorised.",  # a reload cut a live session
            "Client dev-a closed its connection.",
            "garbage",
        ]
    )
    assert events == []


def test_the_tail_reads_appended_lines_and_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "mosquitto.log"
    path.write_text("old line before start\n")
    seen: list[str] = []
    tail = LogTail(path, seen.append)
    st = path.stat()
    tail._inode, tail._offset = st.st_ino, st.st_size  # as start() does
    with path.open("a") as f:
        f.write("one\ntw")
    tail.poll()
    assert seen == ["one"]
    with path.open("a") as f:
        f.write("o\n")
    tail.poll()
    assert seen == ["one", "two"]
    path.rename(tmp_path / "mosquitto.log.1")  # Mosquitto restarted: a new file
    path.write_text("three\n")
    tail.poll()
    assert seen == ["one", "two", "three"]
