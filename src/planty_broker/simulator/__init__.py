"""A virtual ESP32 fleet speaking PROTOCOL.md, for `planty simulate`, tests and benchmarks.

A client of the gateway like any device or operator: may import `protocol`, `errors`
and `transport.gmqtt_hooks` only, never the gateway's own layers.
"""
