"""The front doors towards the Planty server: the HTTP API (`api/`), the dashboard
(`dashboard/`), `/metrics` (`metrics`) and the Firestore connector (`firestore/`).

May import `services`, `ports` (the interfaces), `domain`, `protocol`, `config`,
`errors`, `tasks` and `backoff`; never an adapter (`storage`, `mqttserver`,
`transport`), `cli` or `app`.
"""
