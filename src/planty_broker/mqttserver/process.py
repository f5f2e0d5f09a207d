"""Operating-system side of supervising Mosquitto: binary, privileges, ports, pids, logs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import itertools
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from planty_broker.mqttserver.errors import (
    ListenerUnavailableError,
    MosquittoNotInstalledError,
    PortInUseError,
)
from planty_broker.mqttserver.files import FileOwner
from planty_broker.mqttserver.layout import MosquittoLayout

log = logging.getLogger("planty_broker.mqttserver")

SBIN_PATH = "/usr/sbin:/usr/local/sbin:/sbin"  # Debian installs mosquitto outside a user's PATH
INSTALL_HINT = "install it with `sudo apt-get install mosquitto` (Debian/Ubuntu)"
LOG_ROTATE_BYTES = 20 * 1024 * 1024
MOSQUITTO_USER = "mosquitto"
# Mosquitto's folders for data folders the `mosquitto` user cannot enter (plan_runtime).
FALLBACK_ROOT = Path("/var/lib/planty-mosquitto")
FALLBACK_MARKER = "data-dir"


def find_mosquitto(binary: str) -> str:
    """The absolute path of the Mosquitto binary, or a one-line error saying how to install it."""
    if "/" in binary:
        if os.access(binary, os.X_OK) and Path(binary).is_file():
            return str(Path(binary).resolve())
        raise MosquittoNotInstalledError(
            f"mqtt.mosquitto_bin {binary} does not exist or is not executable; "
            f"{INSTALL_HINT}, fix mqtt.mosquitto_bin, or set mqtt.url for an external MQTT server"
        )
    found = shutil.which(binary) or shutil.which(binary, path=SBIN_PATH)
    if found is None:
        raise MosquittoNotInstalledError(
            f"{binary} is not installed (not on PATH nor in /usr/sbin); {INSTALL_HINT}, "
            "or set mqtt.url (PLANTY_MQTT_URL) to use an external MQTT server"
        )
    return found


# ---------------------------------------------------------------- privileges


def plan_runtime(layout: MosquittoLayout) -> tuple[MosquittoLayout, FileOwner]:
    """Where Mosquitto's files live and whom they belong to; as root, never Mosquitto as root.

    Not root: Mosquitto runs as us, in `data_dir/mosquitto`. As root it drops to the
    `mosquitto` user (Debian's package creates it) right after reading its config, and from
    then on opens its files as that user: its folder holds only what it needs (config,
    password/ACL/CRL files, its copies of the server certificate and key, persistence, log)
    and belongs to it. When that user cannot enter the data folder (one under /root or
    another 0700 folder), the folder is `FALLBACK_ROOT/<id of the data folder>` instead
    (`data-dir` in it names the data folder it serves). Only when there is no such user, or
    no folder it can reach, does Mosquitto stay root (with a warning).
    """
    if os.geteuid() != 0:
        return layout, FileOwner()
    try:
        pw = pwd.getpwnam(MOSQUITTO_USER)
    except KeyError:
        log.warning("running Mosquitto as root: there is no user %r to drop to", MOSQUITTO_USER)
        return layout, FileOwner(user="root")
    owner = FileOwner(user=MOSQUITTO_USER, uid_gid=(pw.pw_uid, pw.pw_gid))
    if layout.runtime_dir is not None:
        return layout, owner
    gids = {pw.pw_gid, *os.getgrouplist(MOSQUITTO_USER, pw.pw_gid)}
    blocked = _first_unsearchable(layout.data_dir, pw.pw_uid, gids)
    if blocked is None:
        return layout, owner
    fallback = fallback_directory(layout.data_dir)
    try:
        fallback.mkdir(mode=0o700, parents=True, exist_ok=True)
        FALLBACK_ROOT.chmod(0o755)  # whatever the umask: `mosquitto` passes through
        marker = fallback / FALLBACK_MARKER
        if not marker.exists():
            marker.write_text(f"{layout.data_dir.resolve()}\n")
        unreachable = _first_unsearchable(fallback.parent, pw.pw_uid, gids)
    except OSError as exc:
        unreachable, why = fallback, str(exc)
    else:
        why = "not searchable"
    if unreachable is not None:
        log.warning(
            "running Mosquitto as root: user %r cannot enter %s nor %s (%s); use a data folder "
            "it can reach or run `chmod o+x %s`",
            MOSQUITTO_USER,
            blocked,
            unreachable,
            why,
            blocked,
        )
        return layout, FileOwner(user="root")
    log.info(
        "Mosquitto runs as %r with its files in %s (it cannot enter %s)",
        MOSQUITTO_USER,
        fallback,
        blocked,
    )
    return dataclasses.replace(layout, runtime_dir=fallback), owner


def mosquitto_directory(data_dir: Path) -> Path:
    """Where the supervised Mosquitto of `data_dir` keeps its files (for tools and tests)."""
    own, fallback = data_dir / "mosquitto", fallback_directory(data_dir)
    if (fallback / FALLBACK_MARKER).exists() and not (own / "mosquitto.conf").exists():
        return fallback
    return own


def fallback_directory(data_dir: Path) -> Path:
    """Mosquitto's folder outside a data folder the `mosquitto` user cannot enter."""
    key = hashlib.sha256(os.fsencode(str(data_dir.resolve()))).hexdigest()[:16]
    return FALLBACK_ROOT / key


def _first_unsearchable(path: Path, uid: int, gids: set[int]) -> Path | None:
    for d in reversed([path, *path.parents]):
        st = d.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return d
    return None


def prepare_directory(directory: Path, owner: FileOwner) -> None:
    """Create Mosquitto's folder (0700) and hand it and its files to the user Mosquitto runs as."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    if owner.uid_gid is None:
        return
    os.chown(directory, *owner.uid_gid)
    for child in directory.iterdir():
        if not child.is_symlink():
            os.chown(child, *owner.uid_gid)


# ---------------------------------------------------------------- ports

_PORT_HINTS = {
    "mqtt.port": "--mqtt-port or PLANTY_MQTT_PORT",
    "mqtt.internal_port": "PLANTY_MQTT_INTERNAL_PORT or mqtt.internal_port in the config file",
    "mqtt.x509_port": "PLANTY_MQTT_X509_PORT or mqtt.x509_port in the config file",
    "mqtt.plaintext_loopback_port": (
        "PLANTY_MQTT_PLAINTEXT_LOOPBACK_PORT or mqtt.plaintext_loopback_port in the config file"
    ),
}


def listeners(layout: MosquittoLayout) -> Iterator[tuple[str, str, int]]:
    """(setting name, bind address, port) of every listener the config opens."""
    yield "mqtt.port", layout.bind, layout.port
    if layout.x509_port:
        yield "mqtt.x509_port", layout.bind, layout.x509_port
    if layout.plaintext_loopback_port:
        yield "mqtt.plaintext_loopback_port", "127.0.0.1", layout.plaintext_loopback_port
    yield "mqtt.internal_port", layout.internal_host, layout.internal_port


def check_ports_free(layout: MosquittoLayout) -> None:
    """Raise PortInUseError (one line, naming the setting) if a listener port is taken."""
    for setting, host, port in listeners(layout):
        hint = _PORT_HINTS[setting]
        try:
            infos = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as exc:
            raise ListenerUnavailableError(
                f"mqtt.bind {host!r} is not an address of this machine ({exc.strerror}); "
                "fix mqtt.bind or PLANTY_MQTT_BIND",
                setting=setting,
                port=port,
            ) from exc
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Mosquitto does
                try:
                    s.bind(address)
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise PortInUseError(
                            f"{setting} {port} is already in use by another program; "
                            f"pick another with {hint}",
                            setting=setting,
                            port=port,
                        ) from None
                    raise ListenerUnavailableError(
                        f"{setting} {port} cannot be opened on {address[0]}: {exc.strerror}; "
                        f"pick another with {hint}",
                        setting=setting,
                        port=port,
                    ) from None


# ---------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = raw.rpartition(")")[2].split()[:1]
    return state not in (["Z"], ["X"])


def is_our_mosquitto(pid: int, conf_path: Path) -> bool:
    """True if `pid` is a live Mosquitto run with `-c <conf_path>` (guards against pid reuse)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not args or not Path(os.fsdecode(args[0])).name.startswith("mosquitto"):
        return False
    conf = os.fsencode(str(conf_path))
    pairs = itertools.pairwise(args)
    return any(flag == b"-c" and value == conf for flag, value in pairs) and pid_alive(pid)


def find_adoptable(layout: MosquittoLayout) -> int | None:
    """The pid of a Mosquitto still running on our config (left by a killed gateway), if any."""
    try:
        pid = int(layout.pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid > 0 and is_our_mosquitto(pid, layout.conf_path) else None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited (status unknown: it was adopted, not our child)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


# ---------------------------------------------------------------- logs


def rotate_log(layout: MosquittoLayout) -> None:
    """Keep one previous log when the current one grew past 20 MiB."""
    path = layout.log_path
    try:
        if path.stat().st_size > LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def log_tail(layout: MosquittoLayout, lines: int = 6) -> str:
    """The last lines Mosquitto wrote (start-up errors first), joined into one line."""
    for path in (layout.stderr_path, layout.log_path):
        tail = _tail(path, lines)
        if tail:
            return " | ".join(tail)
    return "(Mosquitto wrote no log)"


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return [line.strip()[:300] for line in text.splitlines() if line.strip()][-lines:]


@dataclass(slots=True)
class MosquittoProcess:
    """One running Mosquitto: our child (`child` set) or adopted from a previous run."""

    pid: int
    started_at: float
    child: asyncio.subprocess.Process | None
    conf_path: Path

    def alive(self) -> bool:
        if self.child is not None:
            return self.child.returncode is None
        return is_our_mosquitto(self.pid, self.conf_path)

    async def wait(self, poll_s: float) -> int | None:
        """Until it exits: its exit code, or None for an adopted process (not our child)."""
        if self.child is not None:
            return await self.child.wait()
        while self.alive():  # noqa: ASYNC110 - not our child: nothing to await but /proc
            await asyncio.sleep(poll_s)
        return None

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.child is not None:
                if self.child.returncode is None:
                    self.child.send_signal(sig)
            elif self.alive():  # never signal a recycled pid
                os.kill(self.pid, sig)
