"""Values and errors of the device credential service (shared by its modules)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from planty_broker.domain.identity import DeviceCredential
from planty_broker.mqttserver.pki import Pki


class CredentialError(Exception):
    """Root of credential errors; the message is one line for the user."""


class CredentialUnavailableError(CredentialError):
    """The feature needs the supervised MQTT server (or its X.509 listener)."""


class NoLiveCredentialError(CredentialError):
    pass


@dataclass(slots=True)
class MqttControl:
    """How the service reaches the supervised Mosquitto (built by the composition root)."""

    apply: Callable[[], Awaitable[None]]  # write passwd/ACL/CRL from current state, reload
    kick: Callable[[str, str], Awaitable[int]]  # login (user, password) on the internal listener
    pki: Pki | None
    host: str
    token_port: int
    x509_port: int  # 0: no X.509 listener
    device_ports: frozenset[int]  # listeners devices use (token and X.509)


@dataclass(frozen=True, slots=True)
class Issued:
    """A credential just issued: its record and its secret parts (returned once)."""

    credential: DeviceCredential
    token: str | None = None
    cert_pem: str | None = None
    key_pem: str | None = None


def new_cred_id() -> str:
    """A new credential id (not a secret)."""
    return f"k-{secrets.token_hex(6)}"
