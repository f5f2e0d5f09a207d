"""What the services need from outside, as Protocols, with the fakes that stand in for
them in unit tests: the store (`store`), the MQTT server's device authority
(`device_authority`, fake in `memory_authority`), the gateway's MQTT link (`link`).
Adapters live in `storage/`, `mqttserver/` and `transport/`.

May import only `ports`, `domain`, `protocol` and `errors`.
"""
