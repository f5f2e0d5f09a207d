"""`/metrics` in the Prometheus text format, read from live state at scrape time.

Nothing is counted twice: one collector reads the counters the services keep
anyway (FleetStats totals, the MQTT link, the batch writer, the command outbox
and event log when present; what only the store knows is read once per scrape),
so the ingest hot path pays nothing for metrics.
Labels are bounded: state, kind, cause, consumer; a `device` label only for
`metrics.per_device_max` devices when asked (0 by default). The route needs
the bearer token unless `metrics.require_token = false` (see docs/metrics.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from planty_broker import __version__
from planty_broker.domain.models import PresenceState
from planty_broker.domain.stats.counters import COMMAND_FINAL_STATES, ReconnectCause
from planty_broker.domain.stats.windowed import MINUTE_MS, WindowedSketch
from planty_broker.protocol import ErrorKind
from planty_broker.services.context import Services
from planty_broker.services.registry import now_ms

RTT_WINDOW_MS = 5 * MINUTE_MS
MAX_CONSUMERS = 100  # consumers are named by operators: few, but bounded all the same
CLAIM_REFUSALS = (  # every reason a claim is refused for (docs/protocol.md): bounded labels
    "window_closed",
    "window_full",
    "busy",
    "already_claimed",
    "id_taken",
    "invalid_request",
    "unavailable",
)
TOTALS_CACHE_S = 1.0  # summing 10,000 devices' counters takes ~50 ms: at most once a second


def _counter(name: str, doc: str, value: float, **labels: str) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


RTT_QUANTILES = (0.5, 0.95, 0.99)


def _rtt_summary(latency: WindowedSketch, now: int) -> Metric:
    """Round trips as a Prometheus summary: quantiles over the last 5 minutes (from the
    sketch), `_count` and `_sum` over every round trip since the gateway started."""
    name = "planty_command_rtt_seconds"
    summary = Metric(
        name, "Round trip of pings and command acks (quantiles: last 5 minutes)", "summary"
    )
    values = latency.quantiles(RTT_QUANTILES, RTT_WINDOW_MS, now)
    for q, v in zip(RTT_QUANTILES, values, strict=True):
        if v is not None:
            summary.add_sample(name, {"quantile": f"{q:g}"}, v / 1000)
    summary.add_sample(f"{name}_count", {}, latency.total_count)
    summary.add_sample(f"{name}_sum", {}, latency.total_ms / 1000)
    return summary


class GatewayCollector(Collector):
    """Every Planty metric, computed from the composed services when Prometheus scrapes."""

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._totals: tuple[float, dict[str, int]] = (-TOTALS_CACHE_S, {})
        self.log_bounds: Any = None  # LogBounds, read by `refresh` before each scrape
        self.consumers: list[Any] = []
        self.auth: Any = None  # the API's Authenticator (its failure counts), set by the app

    def collect(self) -> Iterator[Metric]:
        svc = self._svc
        info = GaugeMetricFamily("planty_build_info", "Version of the gateway", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield _gauge(
            "planty_uptime_seconds",
            "Seconds since the gateway started",
            max(now_ms() - svc.started_ms, 0) / 1000,
        )
        yield from self._devices()
        yield from self._ingest()
        yield from self._stats()
        yield from self._mqtt()
        yield from self._queue()
        yield from self._longrun()
        yield from self._access()

    # ------------------------------------------------------------ parts

    def _devices(self) -> Iterator[Metric]:
        svc = self._svc
        yield _gauge("planty_devices_registered", "Registered devices", len(svc.registry))
        by_state = GaugeMetricFamily(
            "planty_devices", "Registered devices by presence state", labels=["state"]
        )
        counts = dict.fromkeys(PresenceState, 0)
        for device in svc.registry.all():
            p = svc.presence.get(device.id)
            counts[p.state if p else PresenceState.UNKNOWN] += 1
        for state, n in counts.items():
            by_state.add_metric([state.value], n)
        yield by_state
        yield _gauge(
            "planty_devices_connected",
            "Devices online or late (connected, possibly one interval behind)",
            counts[PresenceState.ONLINE] + counts[PresenceState.LATE],
        )

    def _ingest(self) -> Iterator[Metric]:
        ingest = self._svc.ingest
        writer = ingest.writer
        yield _counter(
            "planty_readings_stored",
            "Telemetry messages stored (rate() = ingest rate)",
            writer.items_written,
        )
        yield _counter("planty_store_batches", "Reading batches committed", writer.batches)
        yield _gauge(
            "planty_store_pending", "Readings waiting for their batch commit", writer.pending()
        )
        yield _gauge(
            "planty_store_failing",
            "1 while the store refuses writes (readings are held, devices not acknowledged)",
            1 if writer.failing_since is not None else 0,
        )
        yield from ingest.store_write_seconds.collect()
        dropped = CounterMetricFamily(
            "planty_messages_dropped",
            "Messages refused before any device could be charged",
            labels=["reason"],
        )
        dropped.add_metric(["unknown_device"], ingest.unknown_device_messages)
        dropped.add_metric(["bad_topic"], ingest.bad_topic_messages)
        dropped.add_metric(["qos0_queue_full"], ingest.dropped_qos0)
        yield dropped
        yield _gauge(
            "planty_ingest_slow_pending",
            "Status and ack messages waiting or being handled",
            ingest.slow_pending(),
        )
        yield _counter(
            "planty_ingest_slow_retries",
            "Status and ack handling attempts that failed while the store was unavailable",
            ingest.slow_retries,
        )
        yield _counter(
            "planty_readings_duplicate",
            "Readings delivered again (same device, boot and seq): acknowledged, not stored",
            ingest.duplicates,
        )
        aside = CounterMetricFamily(
            "planty_store_set_aside",
            "Items the store refused for good, set aside (dead letters) so nothing waits on them",
            labels=["writer"],
        )
        aside.add_metric(["readings"], writer.dead_lettered)
        aside.add_metric(
            ["status_ack"], ingest.slow_dead_lettered + ingest.statuses.dead_lettered
        )
        commands = self._svc.commands
        if commands is not None:
            aside.add_metric(["commands"], commands.outbox.journal.dead_lettered)
        events = self._svc.events
        if events is not None:
            aside.add_metric(["events"], events.writer.dead_lettered)
        rules = self._svc.rules
        if rules is not None:
            aside.add_metric(["rule_history"], rules.engine.history.dead_lettered)
        yield aside
        health = self._svc.health
        if health is not None:
            r = health.readiness()
            yield _gauge("planty_ready", "1 when ready (/readyz answers 200)", 1 if r.ready else 0)
            failing = GaugeMetricFamily(
                "planty_not_ready",
                "1 for each readiness check failing now (the reason is in /readyz)",
                labels=["check"],
            )
            for check, bad in r.failing.items():
                failing.add_metric([check], 1 if bad else 0)
            yield failing
        sup = health.supervisor if health is not None else None
        loops = sup.loops if sup is not None else {}
        restarts = CounterMetricFamily(
            "planty_background_loop_restarts",
            "Restarts of supervised background loops after they died",
            labels=["loop"],
        )
        down = 0
        for state in loops.values():
            restarts.add_metric([state.name], state.restarts)
            down += state.down_since is not None
        yield restarts
        yield _gauge("planty_background_loops_down", "Supervised loops dead, restarting", down)
        dead = self._svc.dead_letters
        if dead is not None:
            yield _gauge("planty_dead_letters", "Dead letters kept", dead.total_held)
            yield _counter(
                "planty_dead_letters_recorded", "Dead letters kept since start", dead.recorded
            )

    def _totals_cached(self, stats: Any) -> dict[str, int]:
        t = time.monotonic()
        if t - self._totals[0] >= TOTALS_CACHE_S:
            self._totals = (t, stats.fleet.totals())
        return self._totals[1]

    def _stats(self) -> Iterator[Metric]:
        stats = self._svc.stats
        if stats is None:
            return
        totals = self._totals_cached(stats)
        for name, key, doc in (
            ("planty_device_messages_in", "msgs_in", "Messages received from devices"),
            ("planty_device_bytes_in", "bytes_in", "Payload bytes received from devices"),
            ("planty_device_messages_out", "msgs_out", "Messages published to devices"),
            ("planty_device_bytes_out", "bytes_out", "Payload bytes published to devices"),
            ("planty_device_readings", "readings", "Telemetry messages accepted"),
        ):
            yield _counter(name, doc, totals[key])
        commands = CounterMetricFamily(
            "planty_commands", "Commands by outcome (sent counts every attempt)", labels=["state"]
        )
        commands.add_metric(["sent"], totals["cmd_sent"])
        for state in COMMAND_FINAL_STATES:
            commands.add_metric([state], totals[f"cmd_{state}"])
        yield commands
        errors = CounterMetricFamily(
            "planty_device_errors",
            "Refused device messages and failed exchanges by kind",
            labels=["kind"],
        )
        unattributed = stats.unattributed
        for kind in ErrorKind:
            errors.add_metric(
                [kind.value], totals[f"err_{kind.value}"] + unattributed.get(kind.value, 0)
            )
        yield errors
        reconnects = CounterMetricFamily(
            "planty_device_reconnects", "Devices back after being away, by cause", labels=["cause"]
        )
        for cause in ReconnectCause:
            reconnects.add_metric([cause.value], totals[f"rc_{cause.value}"])
        yield reconnects
        now = now_ms()
        yield _rtt_summary(stats.fleet.latency, now)
        yield from self._per_device(stats, now)

    def _per_device(self, stats: Any, now: int) -> Iterator[Metric]:
        limit = self._svc.settings.metrics.per_device_max
        if not limit:
            return
        up = GaugeMetricFamily(
            "planty_device_up", "1 if the device is online or late", labels=["device"]
        )
        msgs = CounterMetricFamily(
            "planty_device_messages", "Messages received, per device", labels=["device"]
        )
        p99 = GaugeMetricFamily(
            "planty_device_rtt_p99_seconds", "p99 round trip over 5 minutes", labels=["device"]
        )
        for device in self._svc.registry.all()[:limit]:
            p = self._svc.presence.get(device.id)
            online = p is not None and p.state in (PresenceState.ONLINE, PresenceState.LATE)
            up.add_metric([device.id], 1 if online else 0)
            s = stats.fleet.get(device.id)
            if s is None:
                continue
            msgs.add_metric([device.id], s.msgs_in)
            if not s.latency.is_empty():
                v = s.latency.quantiles((0.99,), RTT_WINDOW_MS, now)[0]
                if v is not None:
                    p99.add_metric([device.id], v / 1000)
        yield from (up, msgs, p99)

    def _mqtt(self) -> Iterator[Metric]:
        link = self._svc.link
        if link is not None:
            yield _gauge(
                "planty_mqtt_connected",
                "1 while the gateway's MQTT link is up",
                1 if link.connected else 0,
            )
            yield _counter(
                "planty_mqtt_reconnects", "Reconnects of the gateway's MQTT link", link.reconnects
            )
            yield _counter(
                "planty_mqtt_messages_received", "MQTT messages received", link.messages_in
            )
            yield _counter(
                "planty_mqtt_messages_published", "MQTT messages published", link.messages_out
            )
            yield _gauge(
                "planty_mqtt_inflight", "QoS 1 publishes waiting for their PUBACK", link.inflight
            )
        restarts = self._svc.authority.restarts
        if restarts is not None:
            yield _counter(
                "planty_mosquitto_restarts", "Restarts of the supervised Mosquitto", restarts
            )
        expiry = getattr(self._svc.authority, "certificate_expiry", None)
        if expiry is not None:
            family = GaugeMetricFamily(
                "planty_cert_expiry_timestamp_seconds",
                "End of validity of the MQTT server's certificates (server renewed 30 days "
                "ahead while running; ca: rotate by hand)",
                labels=["cert"],
            )
            for name, end in sorted(expiry().items()):
                family.add_metric([name], end)
            yield family

    def _queue(self) -> Iterator[Metric]:
        """Command outbox depth and event-log lag (issue 3's services, when running)."""
        commands = self._svc.commands
        outbox = commands.outbox if commands is not None else None
        if outbox is not None:
            depth = GaugeMetricFamily(
                "planty_command_queue", "Commands not yet final, by state", labels=["state"]
            )
            by_state = {"queued": 0, "sent": 0}
            for live in list(outbox.live.values()):
                state = live.rec.state.value
                by_state[state] = by_state.get(state, 0) + 1
            for state, n in sorted(by_state.items()):
                depth.add_metric([state], n)
            yield depth
            yield _gauge(
                "planty_command_journal_pending",
                "Command transitions waiting for their commit",
                outbox.journal.pending(),
            )
            if outbox.lease_owner is not None:  # several instances: each send is leased
                yield _counter(
                    "planty_command_lease_refused",
                    "Sends of a command another instance held the send lease of (waited for)",
                    outbox.dispatcher.lease_refused,
                )
                yield _counter(
                    "planty_command_lease_failures",
                    "Send-lease requests the store could not answer (retried after 1 s)",
                    outbox.dispatcher.lease_failures,
                )
        if self.log_bounds is not None:
            b = self.log_bounds
            yield _gauge("planty_event_log_last_id", "Id of the newest event", b.last_id)
            yield _gauge("planty_event_log_kept", "Events kept in the log", b.kept)
            yield _counter(
                "planty_event_log_deleted_unconfirmed",
                "Events retention deleted before every consumer had confirmed them",
                b.deleted_unconfirmed,
            )
            lag = GaugeMetricFamily(
                "planty_event_consumer_lag",
                "Events appended but not yet confirmed, per named consumer",
                labels=["consumer"],
            )
            dropped = CounterMetricFamily(
                "planty_event_consumer_dropped",
                "Events retention deleted before this consumer confirmed them",
                labels=["consumer"],
            )
            for c in self.consumers[:MAX_CONSUMERS]:
                lag.add_metric([c.name], max(0, b.last_id - c.cursor))
                dropped.add_metric([c.name], c.dropped)
            yield lag
            yield dropped

    def _longrun(self) -> Iterator[Metric]:
        """Long-term history, retention and what the bounds dropped or folded (issue 12)."""
        svc = self._svc
        history = svc.history
        if history is not None:
            t = history.totals
            yield _counter(
                "planty_history_rolled_up", "Readings folded into hourly rollups", t.rolled_up
            )
            deleted = CounterMetricFamily(
                "planty_history_deleted", "Rows deleted by retention", labels=["kind"]
            )
            deleted.add_metric(["readings"], t.readings_deleted)
            deleted.add_metric(["rollups"], t.rollups_deleted)
            deleted.add_metric(["presence"], t.presence_deleted)
            yield deleted
            yield _counter("planty_history_failures", "Housekeeping passes that failed", t.failures)
        events = svc.events
        if events is not None:
            e = events.errors
            errs = CounterMetricFamily(
                "planty_device_error_events",
                "Device errors by what became of them in the event log",
                labels=["outcome"],
            )
            errs.add_metric(["seen"], e.errors)
            errs.add_metric(["events"], e.events)
            errs.add_metric(["overflow"], e.overflowed)
            yield errs
            yield _gauge("planty_device_error_windows", "(device, kind) error windows held", len(e))
        yield _counter(
            "planty_presence_dropped",
            "Presence transitions never stored (store down, backlog full)",
            svc.presence.dropped,
        )
        if svc.stats is not None:
            yield _counter(
                "planty_presence_history_trimmed",
                "Presence transitions forgotten early by the per-device bound",
                svc.stats.history_trimmed,
            )

    def _access(self) -> Iterator[Metric]:
        """Refused API tokens, pairing claims and device claims (issue 13, docs/security.md)."""
        svc = self._svc
        auth = self.auth
        if auth is not None:
            refused = CounterMetricFamily(
                "planty_api_auth_refused",
                "Requests with an invalid or revoked bearer token, by answer",
                labels=["answer"],
            )
            refused.add_metric(["unauthorized"], auth.refused)
            refused.add_metric(["rate_limited"], auth.rate_limited)
            yield refused
            yield _gauge(
                "planty_api_auth_failing_clients",
                "Client addresses with recent token failures held (api.auth_clients_max)",
                len(auth.failures),
            )
        pairing = svc.pairing
        if pairing is not None:
            claims = CounterMetricFamily(
                "planty_pairing_claims_refused",
                "Pairing claims refused: wrong or expired code, or rate-limited (429)",
                labels=["reason"],
            )
            claims.add_metric(["wrong_code"], pairing.failed_claims)
            claims.add_metric(["rate_limited"], pairing.rate_limited)
            yield claims
        prov = svc.provisioning
        if prov is not None:
            yield _counter("planty_device_claims", "Devices provisioned by claim", prov.claims)
            refused = CounterMetricFamily(
                "planty_device_claims_refused",
                "Device claims refused, by the reason the device was told",
                labels=["reason"],
            )
            for reason in CLAIM_REFUSALS:
                refused.add_metric([reason], prov.refused_by.get(reason, 0))
            yield refused
            yield _counter(
                "planty_device_claim_requests_dropped",
                "Claim requests dropped unanswered: too many were waiting",
                prov.dropped,
            )
            taken, most = prov.window_claims
            yield _gauge(
                "planty_claim_window_claims",
                "Claims taken in the open claim window (0 while closed)",
                taken if prov.window_open else 0,
            )
            yield _gauge(
                "planty_claim_window_max_claims",
                "Claims the open claim window takes (0 while closed)",
                most if prov.window_open else 0,
            )

    async def refresh(self) -> None:
        """Read what only the store knows (event log bounds, consumer cursors) before a scrape."""
        events = self._svc.events
        if events is None:
            return
        self.log_bounds = await events.bounds()
        self.consumers = sorted(await events.consumers(), key=lambda c: c.name)


def metrics_registry(svc: Services) -> tuple[CollectorRegistry, GatewayCollector]:
    """A registry of its own per app (tests run several gateways in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = GatewayCollector(svc)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry, collector


def install_metrics(app: FastAPI, svc: Services, dependencies: Iterable[Any] = ()) -> None:
    """Add `GET /metrics`; `dependencies` holds the auth check unless the token is waived."""
    registry, collector = metrics_registry(svc)
    collector.auth = getattr(app.state, "authenticator", None)

    @app.get(
        "/metrics",
        tags=["health"],
        dependencies=[Depends(d) for d in dependencies],
        response_class=Response,
    )
    async def metrics() -> Response:
        """Prometheus metrics (text format 0.0.4)."""
        await collector.refresh()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
