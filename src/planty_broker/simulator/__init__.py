"""A virtual ESP32 fleet speaking PROTOCOL.md, for `planty simulate`, tests and benchmarks."""
