"""The supervised Mosquitto: CA, config, per-device credentials and ACL (docs/mqtt-server.md)."""

from planty_broker.mqttserver.errors import (
    ListenerUnavailableError,
    MosquittoError,
    MosquittoNotInstalledError,
    MosquittoStartError,
    PkiError,
    PortInUseError,
)
from planty_broker.mqttserver.layout import (
    FULL_ACCESS,
    GATEWAY_USERNAME,
    RESERVED_USERNAMES,
    AclGrant,
    MosquittoLayout,
    MqttAccount,
    valid_username,
)
from planty_broker.mqttserver.passwords import hash_token, new_token, verify_token
from planty_broker.mqttserver.pki import Pki, ensure_pki, issue_client_cert
from planty_broker.mqttserver.supervisor import MosquittoSupervisor, UsersProvider

__all__ = [
    "FULL_ACCESS",
    "GATEWAY_USERNAME",
    "RESERVED_USERNAMES",
    "AclGrant",
    "ListenerUnavailableError",
    "MosquittoError",
    "MosquittoLayout",
    "MosquittoNotInstalledError",
    "MosquittoStartError",
    "MosquittoSupervisor",
    "MqttAccount",
    "Pki",
    "PkiError",
    "PortInUseError",
    "UsersProvider",
    "ensure_pki",
    "hash_token",
    "issue_client_cert",
    "new_token",
    "valid_username",
    "verify_token",
]
