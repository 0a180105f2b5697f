"""Concurrency read through the rollup and the status tails (``rollup=True``: whole
minutes from the per-minute rollup, the edges and short or filtered periods from
segments found through ``presence_status_tails``) equals the raw log's, for random
histories written late, out of order and replayed, periods of any alignment, every
bucket, zones on half and quarter hours, filters; and a second-by-second count."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from presence_core import analytics
from tests import test_rollups_reads as reads


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plan=reads.batches,
    replay=st.integers(0, 2),
    ws=st.integers(-3600, reads.SPAN),
    length=st.integers(1, 40 * 3600),
    micro=st.sampled_from((0, 0, 1, 500_000, 999_999)),
    bucket=st.sampled_from(("minute", "5 minutes", "hour", "day")),
    statuses=st.sampled_from((None, ("online",), ("away", "busy"))),
)
@pytest.mark.parametrize("zone", ["UTC", "Asia/Kathmandu", "Australia/Lord_Howe"])
def test_concurrency_through_rollup_and_tails_equals_raw(
    engine, zone, plan, replay, ws, length, micro, bucket, statuses
):
    reads.write(engine, zone, plan, replay)
    lo = reads.origin(zone) + timedelta(seconds=ws, microseconds=micro)
    hi = lo + timedelta(seconds=length)

    def both(**kwargs) -> pd.DataFrame:
        got = analytics.concurrency(engine, lo, hi, bucket, zone, **kwargs)
        want = analytics.concurrency(engine, lo, hi, bucket, zone, rollup=False, **kwargs)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9, atol=1e-9)
        return got

    got = both()
    both(statuses=statuses)
    if bucket == "hour" and zone == "UTC":  # against a second-by-second count
        users = reads.stored_rows(engine)
        start, end = int(lo.timestamp()), int(hi.timestamp())
        if lo.microsecond == 0:
            peaks: dict[int, int] = {}
            for s in range(start, end):
                present = sum(
                    1 for rows in users.values() if reads.state(rows, s) not in (None, "offline")
                )
                label = s // 3600 * 3600
                peaks[label] = max(peaks.get(label, 0), present)
            assert {
                int(b.timestamp()): p for b, p in zip(got["bucket"], got["peak"], strict=True)
            } == peaks


def test_the_edges_follow_a_late_write_after_the_tail(engine):
    """A user whose tail moved after the edge's start is read from the log; one whose
    tail is before it holds the tail's status: both as the raw log says."""
    from presence_core.database.storage import Transition, write_batch

    t0 = reads.origin("UTC")
    rows = [Transition(f"u{k}", "online", t0 + timedelta(minutes=k), t0) for k in range(5)]
    write_batch(engine, rows)
    analytics.refresh_rollups(engine, t0 + timedelta(days=2))
    lo = t0 + timedelta(seconds=30)
    hi = t0 + timedelta(hours=20, seconds=17)
    late = [Transition("u1", "offline", hi - timedelta(seconds=5), t0)]
    write_batch(engine, late)
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from presence_status_tails")).scalar() == 5
    for bucket in ("hour", "minute"):
        got = analytics.concurrency(engine, lo, hi, bucket, "UTC")
        want = analytics.concurrency(engine, lo, hi, bucket, "UTC", rollup=False)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9)
    assert got["peak"].max() == 5 and got["mean"].iloc[-1] < 5
