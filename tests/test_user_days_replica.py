"""Time in status and the daily summary read on a real streaming replica: their cached
days (filled on the primary, streamed) and computed stretches are read one after the
other in one snapshot there (a standby exports no snapshot for a second connection),
with the same rows as on the primary and as the raw log; and availability, whose
halves of the users are one statement there."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta
from datetime import time as dtime

import pandas as pd
import pytest

from presence_core import analytics
from presence_core.database import engine as db
from presence_core.database.embedded import EmbeddedPostgres
from presence_core.database.storage import Transition, write_batch
from tests.conftest import free_port
from tests.replica import streaming_replica
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
availability_module = importlib.import_module("presence_core.analytics.availability")


def test_cached_reads_on_a_replica_equal_the_primarys(tmp_path, monkeypatch):
    """(Availability too: its halves, which need a second connection in the same
    snapshot, are read as one statement on a standby.)"""
    monkeypatch.setattr(availability_module, "_HALVES_FROM", 2)
    server = EmbeddedPostgres(tmp_path / "primary")
    info = server.start(port=free_port())
    writer = db.make_engine(info.url)
    try:
        db.migrate(writer)
        day = datetime(2026, 3, 2, tzinfo=UTC)
        rows = []
        for d in range(6):
            t = day + timedelta(days=d, hours=9, minutes=d)
            rows += [
                ("online", t),
                ("busy", t + timedelta(hours=2)),
                ("offline", t + timedelta(hours=8)),
            ]
        write_batch(writer, [Transition("a", s, t, t) for s, t in rows])
        write_batch(writer, [Transition("b", "away", day + timedelta(hours=7), day)])
        lo, hi = day + timedelta(hours=10), day + timedelta(days=5, hours=13)
        shifts = (lo.date(), hi.date(), "Asia/Kathmandu", dtime(9), dtime(17))
        on_primary = (  # fills the cache on the primary
            analytics.time_in_status(writer, lo, hi, "Asia/Kathmandu"),
            analytics.daily_summary(writer, lo, hi, "Asia/Kathmandu"),
            analytics.availability(writer, *shifts),
        )
        with streaming_replica(server, info) as replica_url:
            reader = db.make_engine(replica_url)
            try:
                wait_for(
                    lambda: (
                        len(analytics.daily_summary(reader, lo, hi, "Asia/Kathmandu"))
                        == len(on_primary[1])
                    ),
                    timeout=30,
                    what="the cached days streamed to the replica",
                )
                got = (
                    analytics.time_in_status(reader, lo, hi, "Asia/Kathmandu"),
                    analytics.daily_summary(reader, lo, hi, "Asia/Kathmandu"),
                    analytics.availability(reader, *shifts),
                )
                raw = (
                    analytics.time_in_status(reader, lo, hi, "Asia/Kathmandu", rollup=False),
                    analytics.daily_summary(reader, lo, hi, "Asia/Kathmandu", rollup=False),
                    analytics.availability(reader, *shifts, rollup=False),
                )
            finally:
                reader.dispose()
        for mine, primary, log in zip(got, on_primary, raw, strict=True):
            pd.testing.assert_frame_equal(mine, primary, check_exact=True)
            pd.testing.assert_frame_equal(mine, log, check_dtype=False)
        assert len(got[0]) > 6 and len(got[1]) == 6 + 6  # a: 6 days; b: away throughout
    finally:
        writer.dispose()
        server.stop()
