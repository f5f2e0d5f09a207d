"""Values and errors of the device credential service (shared by its modules)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from planty_broker.domain.identity import DeviceCredential
from planty_broker.errors import CredentialError


class CredentialUnavailableError(CredentialError):
    """The feature needs a managed MQTT server (or its X.509 listener)."""


class NoLiveCredentialError(CredentialError):
    pass


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
