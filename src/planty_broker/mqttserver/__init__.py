"""The MQTT server side: the supervised Mosquitto (`supervisor`, `process`, `files`,
`layout`, `pki`, `passwords`, `probe`, `login_watch`) and the device-authority
adapters (`authority.MosquittoAuthority` for it, `unmanaged.UnmanagedAuthority` for an
external server). docs/mqtt-server.md.

May import `ports`, `domain`, `protocol`, `config`, `errors`, `tasks` and `backoff`;
never `services`, `northbound`, `storage` or `transport`.
"""
