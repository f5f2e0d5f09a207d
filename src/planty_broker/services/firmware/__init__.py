"""Firmware updates over the air (issue 18): `service` (releases, rollouts wave by wave,
halting, admin actions; the engine) and `transfer` (one release to one device over
its MQTT session: offer, chunks, re-offers). docs/firmware.md, docs/protocol.md.

May import what `services` may.
"""
