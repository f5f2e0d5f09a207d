"""The features, one module or package each, with start/stop, talking over a typed
event bus (`bus`): registry, presence, ingest and the batch writer, the event log
(`events`), the command outbox (`commands/`), rules (`rules/`), statistics (`stats/`),
device credentials and claims (`credentials/`), API tokens and the pairing
(`access/`); `context.Services` is what the front doors get; `queue` and `identity`
compose features that work together.

May import `ports`, `domain`, `protocol`, `config`, `errors`, `tasks`, `backoff` and
each other; never an adapter (`storage`, `mqttserver`, `transport`), a front door
(`northbound`, `cli`) or `app`.
"""
