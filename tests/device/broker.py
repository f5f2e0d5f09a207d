"""A real Mosquitto for device tests: TLS with a test CA, password file, ACL like the gateway's."""

from __future__ import annotations

import getpass
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port
from tests.device.pki import Pki

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
PREFIX = "planty/v1"


@dataclass(frozen=True, slots=True)
class DeviceEndpoint:
    """What a device is provisioned with; a gateway fixture hands out the same fields."""

    host: str
    port: int
    ca_pem: str
    device_id: str
    token: str
    prefix: str = PREFIX

    def secrets(self, ssid: str = "plant-lab", password: str = "wifi-pass") -> dict[str, object]:
        """The secrets.json the CLI writes (docs/firmware.md)."""
        return {
            "wifi": {"ssid": ssid, "password": password},
            "device_id": self.device_id,
            "token": self.token,
            "mqtt": {"host": self.host, "port": self.port, "ca_pem": self.ca_pem},
        }


@dataclass(slots=True)
class Mosquitto:
    """A running broker; `add_device` registers a password before the device connects."""

    folder: Path
    pki: Pki
    port: int
    admin_user: str
    admin_password: str
    proc: subprocess.Popen[bytes] | None = None
    users: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.folder / "mosquitto.log"

    def add_device(self, device_id: str, token: str) -> None:
        self.users[device_id] = token
        self._write_passwords()
        if self.proc is not None:
            self.proc.send_signal(1)  # SIGHUP: reload the password file
            time.sleep(0.2)

    def _write_passwords(self) -> None:
        pw = self.folder / "passwd"
        pw.write_text("")
        for user, secret in {self.admin_user: self.admin_password, **self.users}.items():
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, secret], check=True)

    def start(self) -> None:
        self._write_passwords()
        (self.folder / "acl").write_text(
            f"pattern readwrite {PREFIX}/devices/%u/#\n"
            f"user {self.admin_user}\ntopic readwrite {PREFIX}/#\n"
        )
        conf = self.folder / "mosquitto.conf"
        conf.write_text(
            f"user {getpass.getuser()}\n"
            "per_listener_settings false\n"
            "persistence false\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "allow_anonymous false\n"
            f"password_file {self.folder / 'passwd'}\n"
            f"acl_file {self.folder / 'acl'}\n"
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {self.pki.ca_file}\ncertfile {self.pki.cert_file}\nkeyfile {self.pki.key_file}\n"
            "tls_version tlsv1.2\nset_tcp_nodelay true\n"  # as the gateway's Mosquitto
        )
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def start_mosquitto(folder: Path, pki: Pki) -> Mosquitto:
    m = Mosquitto(folder, pki, free_port(), "planty-admin", "admin-" + folder.name)
    m.start()
    return m
