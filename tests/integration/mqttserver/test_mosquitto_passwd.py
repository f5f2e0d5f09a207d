"""Our hashes and the real `mosquitto_passwd` agree, both ways."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from planty_broker.mqttserver.passwords import verify_token

pytestmark = pytest.mark.integration


def test_verify_token_accepts_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    path = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(path), "dev-1", "tok-en_123"], check=True)
    username, _, hashed = path.read_text().strip().partition(":")
    assert username == "dev-1"
    assert hashed.startswith("$7$")
    assert verify_token("tok-en_123", hashed)
    assert not verify_token("tok-en_124", hashed)
