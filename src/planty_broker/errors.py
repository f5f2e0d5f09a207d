"""One root for every error Planty Broker raises; each message is one line for a person.

The tree (where each class lives in brackets; builtin second bases in parentheses, kept
so that `except ValueError` and the like still work):

PlantyError
├── ConfigError (ValueError)                 [config] a setting is wrong: names it, says how to fix
├── StartupError                             [app] the gateway cannot start
├── ApiServerError (RuntimeError)            [app] the HTTP server ended unasked (restarted)
├── StoreError                               the store
│   ├── TransientStoreError                  retrying the same call later may succeed: hold, retry
│   │   └── StoreUnavailableError            [ports.store] the database cannot be reached or written
│   └── PermanentStoreError                  retrying the same call cannot succeed
│       ├── StoreConfigError                 [ports.store] bad store.url, schema newer than the code
│       ├── StoreRejectedError               [ports.store] the database refused this data itself
│       ├── DeviceExistsError                [ports.store]
│       └── ReleaseExistsError               [ports.store] releases are immutable
├── ProtocolError (ValueError)               [protocol] a topic or payload is not protocol v1
├── MqttServerError                          the MQTT server and the gateway's link to it
│   ├── AuthorityUnavailableError            [ports.device_authority] this set-up cannot do that
│   ├── MosquittoError                       [mqttserver.errors] the supervised Mosquitto
│   │   ├── MosquittoNotInstalledError
│   │   ├── ListenerUnavailableError
│   │   │   └── PortInUseError
│   │   ├── MosquittoStartError
│   │   └── PkiError
│   ├── ProbeError (OSError)                 [mqttserver.probe] not an MQTT server's answer
│   ├── RabbitApiError                       [mqttserver.rabbit_mgmt] no node's API did it
│   ├── RabbitNodeError                      [mqttserver.rabbit_nodes] a RabbitMQ node did not start
│   └── MqttError                            [transport.mqtt] the gateway's own link
│       └── MqttConnectError (ConnectionError)
├── CredentialError                          device credentials
│   ├── CredentialUnavailableError           [services.credentials.types]
│   ├── NoLiveCredentialError                [services.credentials.types]
│   └── ProvisioningError                    [services.credentials.provisioning] claim window
├── AccessError                              the API's own credentials
│   ├── TokenError                           [services.access.tokens]
│   │   ├── UnknownTokenError (KeyError)
│   │   └── InvalidTokenRequestError (ValueError)
│   └── PairingError                         [services.access.pairing]
│       ├── AlreadyPairedError, NotPairedError, InvalidCodeError, ExpiredCodeError
│       └── RateLimitedError
├── RegistryError                            [services.registry] devices
│   ├── InvalidDeviceIdError (ValueError)
│   ├── UnknownDeviceError (KeyError)
│   └── DeviceAlreadyExistsError
├── CommandError (ValueError)                [domain.commands] a command cannot be accepted
│   ├── InvalidActionError, InvalidArgsError [domain.commands]
│   └── QueueFullError, CommandNotFoundError (KeyError), NotCancellableError,
│       CommandConflictError                 [services.commands.service]
├── IllegalTransitionError (RuntimeError)    [domain.commands] a bug: not a CommandError
├── RuleError (ValueError)                   [domain.rules.model] a rule that cannot work
├── RuleNotFoundError (LookupError)          [services.rules.service]
├── RuleExistsError (ValueError)             [services.rules.service]
├── CursorError (ValueError)                 [services.events] an event-log cursor
├── BackupError                              [storage.backup] a backup or restore refused
├── ReleaseError (ValueError)                [domain.firmware] a release that cannot be stored
├── RolloutError (ValueError)                [domain.firmware] a rollout request or action refused
│   └── RolloutNotFoundError, ReleaseNotFoundError (LookupError) [services.firmware.engine]
├── ApiError                                 [northbound.api.errors] one HTTP error response
├── FirestoreError                           [northbound.firestore.port]
│   ├── FirestoreUnavailableError, FirestoreConfigError, FirestoreRejectedError
└── SimulatorError                           [simulator.provision] the virtual fleet
    ├── ProvisioningError, ClaimError, FleetOfflineError
    ├── LinkError (ConnectionError)          [simulator.link]
    ├── CommandRefusedError (ValueError)     [simulator.firmware]
    └── DeviceOfflineError (TimeoutError)    [simulator.stats]

A dependency's errors are turned into ours at the boundary (`raise ... from exc`);
`asyncio.CancelledError` is never caught to be wrapped. A test keeps this drawing
complete: every exception class in `src/` derives from `PlantyError` and is named here.
"""

from __future__ import annotations


class PlantyError(Exception):
    """Root of every error of Planty Broker."""


class StoreError(PlantyError):
    """Root of storage errors; the message says what happened and what to do."""

    transient = False


class TransientStoreError(StoreError):
    """Retrying the same call later may succeed (locked, disk full, connection lost, server
    down): hold the data and retry. The message says what an operator can do meanwhile."""

    transient = True


class PermanentStoreError(StoreError):
    """Retrying the same call cannot succeed: the data or the configuration is at fault."""


class MqttServerError(PlantyError):
    """Root of errors of the MQTT server and of the gateway's link to it."""


class CredentialError(PlantyError):
    """Root of device credential errors; the message is one line for the user."""


class AccessError(PlantyError):
    """Root of errors of the API's own credentials: API tokens and the account pairing."""
