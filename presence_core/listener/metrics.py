"""The listener's counters (:class:`Stats`) and their Prometheus view.

The counters are plain attributes, bumped where things happen (the listener, the
write pipeline); tests, the heartbeat row and a Prometheus scrape read them. The
collector computes its families when scraped, so nothing is kept twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from presence_core.listener.decisions import short

log = logging.getLogger("presence.listener")

__all__ = ["Stats", "listener_registry"]


@dataclass
class Stats:
    """Counters of one listener or database writer."""

    events_received: int = 0
    transitions_written: int = 0
    sightings_queued: int = 0
    batches_written: int = 0
    spooled: int = 0
    replayed: int = 0
    rejected: int = 0
    names_dropped: int = 0
    dropped: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    reconciles: int = 0
    diffs_received: int = 0  # presenceDiff frames (protocol version 2)
    diff_gaps: int = 0  # diffs whose seq jumped: something was missed, reconciled at once
    protocol: int = 0  # the protocol the server speaks with us (0: not known yet)
    db_errors: int = 0
    writers_lost: int = 0
    last_event_at: datetime | None = None
    connected: bool = False

    def drop_names(self, what: str, count: int, payload: object) -> None:
        """Count names (or types, teams) dropped from an event that was kept, because
        PostgreSQL could not store them; logged like rejections."""
        self.names_dropped += count
        if self.names_dropped <= 100 or self.names_dropped % 1000 == 0:
            log.warning(
                "event=names_dropped what=%s reason=not_storable payload=%s total=%d",
                what,
                short(payload),
                self.names_dropped,
            )

    def reject(self, what: str, error: str, payload: object) -> None:
        """Count a bad event or entry, never written, and log it (the first hundred,
        then every thousandth: a flood of junk must not flood the log)."""
        self.rejected += 1
        if self.rejected <= 100 or self.rejected % 1000 == 0:
            log.warning(
                "event=rejected what=%s error=%r payload=%s total=%d",
                what,
                error,
                short(payload),
                self.rejected,
            )


_COUNTERS = (
    ("events_received", "status changes received (userStatusChanged, or in presenceDiff)"),
    ("diffs_received", "presenceDiff frames received (protocol version 2)"),
    ("diff_gaps", "presenceDiff seq jumps: diffs missed, reconciled at once"),
    ("transitions_written", "transition rows inserted (new)"),
    ("spooled", "records appended to the spool"),
    ("replayed", "spooled records replayed into the database"),
    ("rejected", "bad events and refused rows, never written"),
    ("names_dropped", "names dropped from events kept: not storable (NUL, lone surrogate)"),
    ("dropped", "records lost: the spool could not take them (a full disk)"),
    ("reconnects", "connections to the server after the first"),
    ("db_errors", "failed attempts to reach the database"),
    ("writers_lost", "writer processes that died"),
    ("connect_failures", "failed attempts to connect"),
)


class _Collector:
    """Prometheus view of one listener, computed when scraped."""

    def __init__(
        self,
        name: str,
        stats: Stats,
        now: Callable[[], datetime],
        queue_depth: Callable[[], int],
        spool_bytes: Callable[[], int],
    ) -> None:
        self.name, self.stats, self.now = name, stats, now
        self.queue_depth, self.spool_bytes = queue_depth, spool_bytes

    def collect(self) -> Iterator[Metric]:
        st, labels, name = self.stats, ["listener"], [self.name]

        def family(kind, metric: str, doc: str, value: float) -> Metric:
            found = kind(f"presence_listener_{metric}", doc, labels=labels)
            found.add_metric(name, value)
            return found

        for metric, doc in _COUNTERS:
            yield family(CounterMetricFamily, metric, doc, getattr(st, metric))
        age = (self.now() - st.last_event_at).total_seconds() if st.last_event_at else math.nan
        yield family(
            GaugeMetricFamily, "last_event_age_seconds", "seconds since the last event", age
        )
        yield family(
            GaugeMetricFamily, "queue_depth", "records waiting for the writer", self.queue_depth()
        )
        yield family(GaugeMetricFamily, "spool_bytes", "bytes in the spool", self.spool_bytes())
        yield family(
            GaugeMetricFamily, "connected", "1 while connected to the server", int(st.connected)
        )


def listener_registry(
    name: str,
    stats: Stats,
    *,
    now: Callable[[], datetime],
    queue_depth: Callable[[], int],
    spool_bytes: Callable[[], int],
) -> CollectorRegistry:
    """A Prometheus registry holding one listener's metrics (``presence listen
    --metrics-port`` serves it); the callables are read at each scrape."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Collector(name, stats, now, queue_depth, spool_bytes))
    return registry
