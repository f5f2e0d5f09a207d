"""Errors of the supervised MQTT server; each message is one line that says what to do.

MosquittoError
├── MosquittoNotInstalledError   the binary is missing
├── ListenerUnavailableError     a listener cannot be opened (bad address, no permission)
│   └── PortInUseError           another program holds the port
├── MosquittoStartError          it started but never accepted connections, or exited
└── PkiError                     the CA / certificate files are unusable
"""

from __future__ import annotations

from planty_broker.errors import MqttServerError


class MosquittoError(MqttServerError, RuntimeError):
    """Root of every error raised by `planty_broker.mqttserver`."""


class MosquittoNotInstalledError(MosquittoError):
    """The `mosquitto` binary was not found."""


class ListenerUnavailableError(MosquittoError):
    """A listener address/port cannot be opened by us."""

    def __init__(self, message: str, *, setting: str, port: int) -> None:
        super().__init__(message)
        self.setting = setting
        self.port = port


class PortInUseError(ListenerUnavailableError):
    """Another program already listens on a port the supervised Mosquitto needs."""


class MosquittoStartError(MosquittoError):
    """Mosquitto exited or did not accept connections in time; the message quotes its log."""


class PkiError(MosquittoError):
    """The broker's CA or server certificate files are missing, broken or inconsistent."""
