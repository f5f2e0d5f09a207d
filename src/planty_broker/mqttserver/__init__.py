"""The supervised Mosquitto: CA, config, per-device credentials and ACL (docs/mqtt-server.md)."""
