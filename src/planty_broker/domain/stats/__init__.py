"""Statistics values: per-device and fleet counters (`counters`), latency sketches
(`sketch`, and `windowed` for sliding windows) and availability from presence spans.
Cheap to update on the hot path, plain values to read.

May import only `domain`, `protocol` and `errors`.
"""
