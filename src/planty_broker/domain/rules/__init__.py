"""Threshold rules that run in the broker (issue 5), the pure engine: `model` (the rule
value, parsing, validation), `clock` (daily windows, budget days), `eval` (one reading
in, at most one decision out), `index` (the hot path's device -> reading -> rules),
`thresholds` (the `set_thresholds` shortcut), `records` (what the rule store keeps).
Semantics: docs/rules.md.

May import only `domain`, `protocol` and `errors`.
"""
