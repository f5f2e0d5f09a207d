"""Token hashes in Mosquitto 2.0's password-file format."""

from __future__ import annotations

import re

import pytest

from planty_broker.mqttserver.passwords import hash_token, is_password_hash, new_token, verify_token

# Written by `mosquitto_passwd -b pw dev1 secret` (Mosquitto 2.0.11) on the build machine.
MOSQUITTO_PASSWD_SECRET = (
    "$7$101$yldrmZSD6uE6kEQf$CMoIWEpso8PrHQLZ1oIkMBtGM1Ju7Pop1JWyEc6/FMuM1H1XE5O69Ng"
    "n4WbEQW214ijL1mmeDzCbSdiXFs/kjw=="
)


def test_verifies_a_hash_written_by_mosquitto_passwd() -> None:
    assert verify_token("secret", MOSQUITTO_PASSWD_SECRET)
    assert not verify_token("Secret", MOSQUITTO_PASSWD_SECRET)


def test_hash_has_mosquitto_passwd_shape() -> None:
    ours = hash_token("secret")
    shape = r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}=="
    assert re.fullmatch(shape, ours)
    assert re.fullmatch(shape, MOSQUITTO_PASSWD_SECRET)


def test_hash_round_trip_and_salting() -> None:
    token = new_token()
    first, second = hash_token(token), hash_token(token)
    assert first != second  # fresh salt each time
    assert verify_token(token, first)
    assert verify_token(token, second)
    assert not verify_token(token + "x", first)
    assert not verify_token("", first)


def test_custom_iterations_are_recorded_and_verified() -> None:
    hashed = hash_token("t", iterations=1000)
    assert hashed.startswith("$7$1000$")
    assert verify_token("t", hashed)
    with pytest.raises(ValueError, match="iterations"):
        hash_token("t", iterations=0)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "plain-text",
        "$6$abc$def",
        "$7$101$yldrmZSD6uE6kEQf$CMoI",  # hash too short
        MOSQUITTO_PASSWD_SECRET + "\nevil:$7$1$AA==$AA==",  # line injection
        MOSQUITTO_PASSWD_SECRET.replace("$101$", "$0$"),
        MOSQUITTO_PASSWD_SECRET.replace("yldr", "yl!r"),
    ],
)
def test_malformed_hashes_never_verify(bad: str) -> None:
    assert not is_password_hash(bad)
    assert not verify_token("secret", bad)


def test_new_tokens_are_long_url_safe_and_unique() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    for t in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", t)  # 192 bits
