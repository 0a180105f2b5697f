"""Availability read from the summaries (each day's shift a span: whole quarter-hours
from the arrays, the ragged ends from the log) equals the raw log's, to the float, for
random histories written late, out of order and replayed, shifts of any alignment
(seconds, night shifts across midnight and DST changes), zones on half and quarter
hours, several status sets and filters."""

from __future__ import annotations

from datetime import time, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from presence_core import analytics
from tests import test_rollups_reads as reads


@reads.database_property
@given(
    plan=reads.batches,
    replay=st.integers(0, 2),
    h0=st.integers(0, 23),
    m0=st.sampled_from((0, 15, 30, 7)),
    s0=st.sampled_from((0, 0, 1, 59)),
    hours=st.integers(1, 30),
    statuses=st.sampled_from((("online",), ("online", "busy"), ("away",), ("online", "offline"))),
    whole_day=st.booleans(),
)
@pytest.mark.parametrize("zone", reads.ZONES)
def test_availability_from_summaries_equals_raw(
    engine, zone, plan, replay, h0, m0, s0, hours, statuses, whole_day
):
    reads.write(engine, zone, plan, replay)
    first = reads.origin(zone).astimezone(ZoneInfo(zone)).date() - timedelta(days=1)
    start = time(h0, m0, s0)
    end = None if whole_day else (time((h0 + hours) % 24, (m0 * 3) % 60))
    for kwargs in ({}, {"user_ids": ["u0", "u2"]}):
        got = analytics.availability(
            engine, first, first + timedelta(days=4), zone, start, end, statuses, **kwargs
        )
        want = analytics.availability(
            engine,
            first,
            first + timedelta(days=4),
            zone,
            start,
            end,
            statuses,
            rollup=False,
            **kwargs,
        )
        pd.testing.assert_frame_equal(got, want)
        assert len(got) == 5 * len(got["user_id"].unique())
