"""Ports nobody asked for: picked free once, recorded in the data folder, reused after.

Several gateways run side by side with only `--data-dir --api-port --mqtt-port`
(README). The supervised Mosquitto needs two more ports: the loopback listener of
the gateway's own connection (`mqtt.internal_port`) and the X.509 device listener
(`mqtt.x509_port`). Left at 0, each is picked here: a port that is free now, taken
below the kernel's ephemeral range (so an outgoing connection cannot grab it
before Mosquitto binds it) and recorded in `<data_dir>/ports.json`.

A later start reuses what was recorded: Mosquitto left running by a killed
gateway keeps listening there (it is adopted, see supervisor.py), and devices
with a certificate were told the X.509 port. If the recorded internal port was
taken meanwhile, another is picked; a taken X.509 port is an error naming the
setting, because devices already use it.

A data folder from a version before ports.json (one that already holds the broker's
CA, `pki/ca.pem`, or Mosquitto's config, `mosquitto/mosquitto.conf`, both made after
the ports are resolved on a first start, but no ports.json; the CA is also in every
backup) keeps that version's fixed ports instead of picking: X.509 on `mqtt.port + 1`,
which devices in the field were given, and the internal listener on 18830 (picked
afresh if that one is taken, since nobody outside knows it). They are then recorded
like picked ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import random
import socket
from pathlib import Path

from planty_broker.mqttserver.errors import PortInUseError
from planty_broker.mqttserver.layout import MosquittoLayout
from planty_broker.mqttserver.process import find_adoptable

log = logging.getLogger("planty_broker.mqttserver")

PORTS_FILE = "ports.json"
# The fixed ports of versions before ports.json: internal 18830, X.509 mqtt.port + 1.
LEGACY_INTERNAL_PORT = 18830
LOWEST_PICK = 20000  # picked ports are in LOWEST_PICK .. the ephemeral range's start
_PICK_TRIES = 200


def ports_path(data_dir: Path) -> Path:
    return data_dir / PORTS_FILE


def resolve_ports(layout: MosquittoLayout) -> MosquittoLayout:
    """`assign_ports`, knowing whether a Mosquitto of ours still holds the recorded ports."""
    if layout.internal_port and not layout.pick_x509:
        return layout
    return assign_ports(layout, adopting=find_adoptable(layout) is not None)


def assign_ports(layout: MosquittoLayout, *, adopting: bool = False) -> MosquittoLayout:
    """`layout` with `internal_port` and a picked X.509 port made concrete (and recorded).

    `adopting`: a Mosquitto of ours still runs on this data folder, so the recorded
    ports are in use by it and must be kept even though they cannot be bound now.
    """
    pick_internal = layout.internal_port == 0
    if not pick_internal and not layout.pick_x509:
        return layout
    path = ports_path(layout.data_dir)
    on_disk = _read(path)
    legacy = not on_disk and not path.exists() and _used_before(layout)
    recorded = _legacy_ports(layout) if legacy else on_disk
    taken = {layout.port, layout.plaintext_loopback_port, layout.internal_port, layout.x509_port}
    taken.discard(0)
    internal = layout.internal_port
    if pick_internal:
        internal = _keep_or_pick(
            recorded.get("mqtt.internal_port"), layout.internal_host, taken, adopting
        )
        taken.add(internal)
    x509 = layout.x509_port
    if layout.pick_x509:
        kept = recorded.get("mqtt.x509_port")
        if kept and not adopting and (kept in taken or not port_free(layout.bind, kept)):
            origin = (
                "mqtt.port + 1, this data folder's X.509 port since before ports.json"
                if legacy
                else f"picked on the first start, recorded in {path}"
            )
            raise PortInUseError(
                f"mqtt.x509_port {kept} ({origin}, and given to devices with certificates) is "
                "now in use by another program; free it, or set PLANTY_MQTT_X509_PORT (devices "
                "with certificates must then be told)",
                setting="mqtt.x509_port",
                port=kept,
            )
        x509 = kept or _pick(layout.bind, taken)
    chosen = dict(on_disk)
    if pick_internal:
        chosen["mqtt.internal_port"] = internal
    if layout.pick_x509:
        chosen["mqtt.x509_port"] = x509
    if chosen != on_disk:
        _write(path, chosen)
        if legacy:
            log.info(
                "data folder from before ports.json: its ports are kept (X.509 on mqtt.port + 1)"
                " and recorded in %s: %s", path, chosen,
            )
        else:
            log.info("ports picked for this data folder (recorded in %s): %s", path, chosen)
    return dataclasses.replace(layout, internal_port=internal, x509_port=x509, pick_x509=False)


def _used_before(layout: MosquittoLayout) -> bool:
    """True if a supervised Mosquitto ran on this data folder before (or was restored)."""
    return (layout.pki_dir / "ca.pem").exists() or layout.conf_path.exists()


def _legacy_ports(layout: MosquittoLayout) -> dict[str, int]:
    """The ports a version before ports.json used on this data folder (its defaults)."""
    ports = {"mqtt.internal_port": LEGACY_INTERNAL_PORT}
    if layout.port < 65535:
        ports["mqtt.x509_port"] = layout.port + 1
    return ports


def port_free(host: str, port: int) -> bool:
    """True if `port` can be bound on `host` now (as Mosquitto binds: SO_REUSEADDR)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return False
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                    return False
                raise
    return True


def _keep_or_pick(kept: int | None, host: str, taken: set[int], adopting: bool) -> int:
    if kept and kept not in taken and (adopting or port_free(host, kept)):
        return kept
    return _pick(host, taken)


def _pick(host: str, taken: set[int]) -> int:
    low, high = LOWEST_PICK, _ephemeral_start()
    rng = random.SystemRandom()
    for _ in range(_PICK_TRIES):
        port = rng.randrange(low, high)
        if port not in taken and port_free(host, port):
            return port
    # A crowded machine: let the kernel choose (an ephemeral port, still free right now).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1" if host in ("", "0.0.0.0") else host, 0))  # noqa: S104
        return int(s.getsockname()[1])


def _ephemeral_start() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, LOWEST_PICK + 1000)


def _read(path: Path) -> dict[str, int]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s (%s): ports will be picked again", path, exc)
        return {}
    if not isinstance(raw, dict):
        return {}
    return {
        k: v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0
    }


def _write(path: Path, ports: dict[str, int]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(ports, f, indent=1, sort_keys=True)
        f.write("\n")
    try:
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
