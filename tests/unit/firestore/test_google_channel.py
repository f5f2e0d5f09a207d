"""The Google client's channels reconnect within 5 s after Firestore is back (gRPC's own
delay grows to 120 s): the option reaches the lists the library builds its channels from."""

from __future__ import annotations

import pytest

pytest.importorskip("google.cloud.firestore")


def test_channels_are_built_with_a_short_reconnect_delay() -> None:
    from google.cloud.firestore_v1 import base_client

    from planty_broker.northbound.firestore.google_port import RECONNECT_OPTIONS

    assert ("grpc.max_reconnect_backoff_ms", 5_000) in RECONNECT_OPTIONS
    for option in RECONNECT_OPTIONS:
        assert option in base_client._DEFAULT_CHANNEL_OPTIONS  # Google's servers
        assert option in base_client._GRPC_MSG_SIZE_OPTIONS  # the emulator's channel
