"""The HTTP API (FastAPI): `app` (the factory; includes every router), `deps` (the
services and the authenticated caller, what routers depend on), `auth`, `errors`,
`timefmt`, and one router module per feature (`devices`, `commands`, `events`,
`rules`, `stats`, `tokens`, `pairing`, `credentials`).

May import what `northbound` may; routers import `deps`, never `app`.
"""
