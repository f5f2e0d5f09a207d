"""Fleet statistics: `service` (counters, vitals, reconnects, latency, availability),
`history` (recent presence per device), `views` (plain values for the API and the
dashboard charts).

May import what `services` may.
"""
