"""The core never imports google-cloud: Firestore is an optional extra."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_gateway_does_not_load_google_cloud() -> None:
    code = (
        "import sys\n"
        "import planty_broker.app, planty_broker.cli.main\n"
        "import planty_broker.northbound.firestore.connector\n"  # the connector package itself, too
        "loaded = sorted(m for m in sys.modules if m.startswith(('google.cloud', 'grpc')))\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_the_firestore_settings_are_off_by_default_and_take_the_emulator_variable() -> None:
    from planty_broker.config import load_settings

    assert load_settings(env={}).firestore.enabled is False
    s = load_settings(env={"FIRESTORE_EMULATOR_HOST": "127.0.0.1:8085"})
    assert s.firestore.emulator_host == "127.0.0.1:8085"
    s = load_settings(
        env={"FIRESTORE_EMULATOR_HOST": "a:1"},
        overrides={"firestore": {"emulator_host": "b:2"}},
    )
    assert s.firestore.emulator_host == "b:2"


def test_without_the_extra_the_connector_says_how_to_install_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['google.cloud'] = None\n"  # as if google-cloud-firestore were missing
        "from planty_broker.northbound.firestore.port import FirestoreConfigError\n"
        "try:\n"
        "    import planty_broker.northbound.firestore.google_port\n"
        "except FirestoreConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == (
        "firestore: the Google client is not installed; install the extra: "
        "pip install 'planty-broker[firestore]'"
    )
