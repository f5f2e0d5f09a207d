"""The Firestore connector (issue 6): the original design's cloud front door.

`FirestoreConnector` (connector.py) is started by the gateway when
`[firestore] enabled = true`. Only `google_port` imports google-cloud, and only
when the connector starts, so the core never loads it with Firestore off.
Document model and deployment: docs/firestore.md.

May import what `northbound` may; only `google_port` imports google-cloud.
"""
