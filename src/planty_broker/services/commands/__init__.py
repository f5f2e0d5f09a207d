"""The durable command outbox (issue 3): `service` (the front door: submit, wait, cancel,
acks), `outbox` (live commands, delivery, timeouts, re-sends), `journal` (group commit of
changes), `dispatch` (paced sending over the link), `timers` (one heap for every
deadline), `ping` (round-trip latency). docs/commands.md.

May import what `services` may.
"""
