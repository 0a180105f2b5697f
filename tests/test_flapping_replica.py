"""Flapping users and daily active users read on a real streaming replica: their reads
there run one after the other in one snapshot, keep nothing, and give the primary's
rows (flapping: from the days the primary kept, streamed, and the days it did not)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from presence_core import analytics
from presence_core.database import engine as db
from presence_core.database.embedded import EmbeddedPostgres
from presence_core.database.storage import write_batch
from tests.conftest import free_port
from tests.replica import streaming_replica
from tests.test_analytics_flapping import burst
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def test_flapping_and_daily_active_users_on_a_replica_equal_the_primarys(tmp_path):
    server = EmbeddedPostgres(tmp_path / "primary")
    info = server.start(port=free_port())
    writer = db.make_engine(info.url)
    try:
        db.migrate(writer)
        day = datetime(2026, 3, 2, 23, 59, 30, tzinfo=UTC)
        rows = []
        for k in range(8):  # bursts across midnights, one user each
            rows += burst(f"u{k}", day + timedelta(days=k, seconds=k))
        write_batch(writer, rows)
        kept_lo, lo, hi = day, day - timedelta(days=2), day + timedelta(days=9)
        analytics.flapping_users(writer, kept_lo, hi - timedelta(days=3))  # keeps some days
        on_primary = (
            analytics.flapping_users(writer, lo, hi, workers=1),
            analytics.daily_active_users(writer, lo, hi, "UTC"),
        )
        with streaming_replica(server, info) as replica_url:
            reader = db.make_engine(replica_url)
            try:
                wait_for(
                    lambda: len(analytics.flapping_users(reader, lo, hi)) == 8,
                    timeout=30,
                    what="the rows streamed to the replica",
                )
                got = (
                    analytics.flapping_users(reader, lo, hi),
                    analytics.daily_active_users(reader, lo, hi, "UTC"),
                )
            finally:
                reader.dispose()
        for mine, primary in zip(got, on_primary, strict=True):
            pd.testing.assert_frame_equal(mine, primary)
        assert len(got[0]) == 8
    finally:
        writer.dispose()
        server.stop()
