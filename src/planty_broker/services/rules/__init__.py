"""The rules service (issue 5): `service` (one rule store, two front doors; the
`set_thresholds` of the original design), `engine` (readings in, commands and history
lines out), `info` (what it hands out about a rule).

May import what `services` may.
"""
