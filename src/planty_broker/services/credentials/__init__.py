"""Device credentials over their whole life (issue 4): `service` (issue, revoke, the
desired state handed to the device authority), `rotation` (overlap, delivery, switch),
`provisioning` (claim window and claim requests), `events` (credential events),
`logins` (the authority's login events as credential events), `types` (shared values
and errors). The MQTT server is reached only through `ports.device_authority`.

May import what `services` may.
"""
