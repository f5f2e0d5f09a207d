"""The gateway's own MQTT connection (`mqtt.MqttLink`, implementing `ports.link`) and the
one place that touches gmqtt's internals (`gmqtt_hooks`).

May import `ports`, `protocol`, `errors` and `backoff`; never `services`, `northbound`,
`storage` or `mqttserver`.
"""
