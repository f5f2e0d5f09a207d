"""The real umqtt.simple source from PyPI (micropython-umqtt.simple 1.3.4), fetched once and pinned.

That sdist has neither setup.py nor pyproject.toml, so neither uv nor pip can install
it as a dependency; the tests fetch the exact archive from PyPI instead, check its
sha256, and put the unchanged `umqtt/simple.py` on sys.path.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.request
from pathlib import Path

VERSION = "1.3.4"
URL = (
    "https://files.pythonhosted.org/packages/bd/cf/"
    "697e3418b2f44222b3e848078b1e33ee76aedca9b6c2430ca1b1aec1ce1d/"
    "micropython-umqtt.simple-1.3.4.tar.gz"
)
SDIST_SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
SIMPLE_SHA256 = "8555d2f654deb8eb0d724f79b0811a78cc94029d070f3d96bbd74288653d63a5"


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "planty-broker-tests" / ("umqtt.simple-" + VERSION)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def umqtt_path() -> Path:
    """A folder holding `umqtt/simple.py` exactly as published; downloads it on first use."""
    root = _cache_root()
    simple = root / "umqtt" / "simple.py"
    if simple.exists() and _sha256(simple.read_bytes()) == SIMPLE_SHA256:
        return root
    try:
        with urllib.request.urlopen(URL, timeout=60) as resp:
            sdist = resp.read()
    except OSError as exc:
        raise RuntimeError(
            f"cannot fetch micropython-umqtt.simple {VERSION} from PyPI ({exc}); "
            f"the device tests need it once, then use {root}"
        ) from exc
    if _sha256(sdist) != SDIST_SHA256:
        raise RuntimeError(f"micropython-umqtt.simple {VERSION} from PyPI changed: sha256 mismatch")
    with tarfile.open(fileobj=io.BytesIO(sdist)) as tar:
        member = tar.extractfile(f"micropython-umqtt.simple-{VERSION}/umqtt/simple.py")
        assert member is not None
        source = member.read()
    if _sha256(source) != SIMPLE_SHA256:
        raise RuntimeError("umqtt/simple.py inside the sdist is not the pinned one")
    simple.parent.mkdir(parents=True, exist_ok=True)
    tmp = simple.with_suffix(f".{os.getpid()}.tmp")  # xdist workers may fetch it at once
    tmp.write_bytes(source)
    tmp.replace(simple)
    return root


# The later interfaces, as the published 1.3.4 source patched the way micropython-lib changed
# it: 1.4 takes an SSLContext in `ssl` (no `ssl_params`) and wraps with its wrap_socket;
# 1.5 adds `connect(timeout=)` (1.6 and 1.7 keep that interface). Those sources are not on
# the package registries the tests can reach, so this checks the device's side of each
# interface; the real 1.4-1.7 were run by hand on a MicroPython 1.28 unix build (issue 18).
_PATCHES: dict[str, list[tuple[str, str]]] = {
    "1.4": [
        (
            "keepalive=0,\n                 ssl=False, ssl_params={}):",
            "keepalive=0,\n                 ssl=None):",
        ),
        ("        self.ssl_params = ssl_params\n", ""),
        (
            "            import ussl\n            self.sock = ussl.wrap_socket(self.sock, **self.ssl_params)",
            "            self.sock = self.ssl.wrap_socket(self.sock, server_hostname=self.server)",
        ),
    ],
}
_PATCHES["1.5"] = [
    *_PATCHES["1.4"],
    (
        "    def connect(self, clean_session=True):\n        self.sock = socket.socket()\n",
        "    def connect(self, clean_session=True, timeout=None):\n"
        "        self.sock = socket.socket()\n        self.sock.settimeout(timeout)\n",
    ),
]
INTERFACES = ("1.3.4", "1.4", "1.5")


def source(interface: str) -> str:
    """umqtt/simple.py as published (1.3.4) or with a later interface patched in."""
    text = (umqtt_path() / "umqtt" / "simple.py").read_text()
    for old, new in _PATCHES.get(interface, []):
        if old not in text:
            raise RuntimeError(f"umqtt.simple {interface} patch does not apply: {old[:40]!r}")
        text = text.replace(old, new)
    return text
