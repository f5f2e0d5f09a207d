"""The provisioning additions to protocol v1: claim requests, topics, credential delivery."""

from __future__ import annotations

import pytest

from planty_broker.protocol import (
    ClaimReply,
    ClaimRequest,
    CredentialDelivery,
    ProtocolError,
    claim_slot_name,
    credential_config_args,
    credential_from_args,
    decode_claim_reply,
    decode_claim_request,
    encode_provisioning,
    parse_provision_topic,
    provision_subscription,
    provision_topic,
)


def test_topics_of_a_claim_slot() -> None:
    slot = claim_slot_name(7)
    assert slot == "planty-claim-7"
    assert (
        provision_topic("planty/v1", slot, "request")
        == "planty/v1/provision/planty-claim-7/request"
    )
    assert provision_subscription("planty/v1") == "planty/v1/provision/+/request"
    assert parse_provision_topic("planty/v1", "planty/v1/provision/planty-claim-7/request") == slot
    for not_a_request in (
        "planty/v1/provision/planty-claim-7/reply",
        "planty/v1/provision/dev-a/request",  # a device id is not a slot
        "planty/v1/provision/planty-claim-07/request",
        "planty/v1/devices/dev-a/status",
    ):
        assert parse_provision_topic("planty/v1", not_a_request) is None


def test_a_claim_request_round_trips() -> None:
    req = ClaimRequest(req="a1", serial="ESP32-00AB", type="x509", id="greenhouse-3")
    assert decode_claim_request(encode_provisioning(req)) == req
    reply = ClaimReply(req="a1", ok=True, id="greenhouse-3", token="t" * 32, port=8883)
    assert decode_claim_reply(encode_provisioning(reply)) == reply


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"serial": "x"}',  # no req
        b'{"req": "has space", "serial": "x"}',
        b'{"req": "a", "serial": ""}',
        b'{"req": "a", "serial": "x", "type": "psk"}',
        b'{"req": "a", "serial": "x", "id": "Bad_Id"}',
        b'{"req": "a", "serial": "x", "token": "short"}',
        b'{"req": "a", "serial": "x", "type": "x509", "token": "' + b"t" * 30 + b'"}',
    ],
)
def test_unusable_claim_requests_are_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_claim_request(payload)


def test_a_credential_travels_inside_config_args() -> None:
    token = CredentialDelivery("k-1", "token", token="s" * 32, port=8883)
    assert credential_from_args(credential_config_args(token)) == token
    cert = CredentialDelivery("k-2", "x509", cert_pem="C", key_pem="K", port=8884)
    assert credential_from_args(credential_config_args(cert)) == cert
    assert credential_from_args({"interval_s": 30}) is None
    for bad in ({"id": "k", "type": "token"}, {"id": "k", "type": "x509", "cert_pem": "C"}):
        with pytest.raises(ProtocolError):
            credential_from_args({"credential": bad})
