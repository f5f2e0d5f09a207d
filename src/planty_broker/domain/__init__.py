"""Pure values and decisions: devices, readings, presence, commands and their state
machine, identity values, the event log's values, rules (`rules/`) and statistics
(`stats/`). No I/O, no asyncio: time comes in as an argument.

May import only `domain`, `protocol` (the device vocabulary) and `errors`.
"""
