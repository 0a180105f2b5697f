"""Availability read from the summaries (each day's shift a span: whole quarter-hours
from the arrays, the ragged ends from the log) equals the raw log's, to the float, for
random histories written late, out of order and replayed, shifts of any alignment
(seconds, night shifts across midnight and DST changes), zones on half and quarter
hours, several status sets and filters."""

from __future__ import annotations

import importlib
from datetime import time, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from presence_core import analytics
from tests import test_rollups_reads as reads

availability_module = importlib.import_module("presence_core.analytics.availability")


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
    engine, monkeypatch, zone, plan, replay, h0, m0, s0, hours, statuses, whole_day
):
    # the summaries' read splits the users in two halves from this many (200 in use)
    monkeypatch.setattr(availability_module, "_HALVES_FROM", 2)
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


def _plain_agents(engine, first, last, zone, start, end, statuses, **kwargs) -> pd.DataFrame:
    """The per-agent table composed from the per-day reads, as the page built it before
    agent_summary summed in SQL: availability, time in status and the daily summary per
    day summed here, sessions of positive length counted here."""
    avail = analytics.availability(
        engine, first, last, zone, start, end, statuses, rollup=False, **kwargs
    )
    per = avail.groupby("user_id").agg(
        available_seconds=("available_seconds", "sum"), shift_seconds=("shift_seconds", "sum")
    )
    online = analytics.online_seconds(engine, first, last, zone, per_day=False, **kwargs)
    per["online_seconds"] = online.set_index("user_id")["online_seconds"]
    daily = analytics.daily_summary(engine, first, last, zone, rollup=False, **kwargs)
    per["first_in"] = daily.groupby("user_id")["first_online"].min()
    per["last_out"] = daily.groupby("user_id")["last_offline"].max()
    sessions = analytics.sessions(engine, first, last, tz=zone, **kwargs)
    sessions = sessions[sessions["ended_at"] > sessions["started_at"]]
    per["sessions"] = sessions.groupby("user_id").size()
    in_status = analytics.time_in_status(engine, first, last, zone, rollup=False, **kwargs)
    for status, rows in in_status.groupby("status"):
        per[f"in {status}"] = rows.groupby("user_id")["seconds"].sum()
    return per


@reads.database_property
@given(
    plan=reads.batches,
    replay=st.integers(0, 2),
    skip=st.integers(0, 2),
    h0=st.integers(0, 23),
    m0=st.sampled_from((0, 15, 30, 7)),
    hours=st.integers(1, 30),
    statuses=st.sampled_from((("online",), ("online", "busy"), ("online", "offline"))),
    whole_day=st.booleans(),
)
@pytest.mark.parametrize("zone", reads.ZONES)
def test_agent_summary_from_summaries_equals_raw_and_the_per_day_reads(
    engine, monkeypatch, zone, plan, replay, skip, h0, m0, hours, statuses, whole_day
):
    # the totals in two halves of the users (as for 200 or more), checked against the raw log
    monkeypatch.setattr(availability_module, "_HALVES_FROM", 2)
    reads.write(engine, zone, plan, replay)
    # from before the history, or from inside it (sessions running at the period's start)
    first = reads.origin(zone).astimezone(ZoneInfo(zone)).date() - timedelta(days=1 - skip)
    last = first + timedelta(days=2)
    start = time(h0, m0)
    end = None if whole_day else time((h0 + hours) % 24, (m0 * 3) % 60)
    got = analytics.agent_summary(engine, first, last, zone, start, end, statuses)
    want = analytics.agent_summary(engine, first, last, zone, start, end, statuses, rollup=False)
    pd.testing.assert_frame_equal(got, want)
    # the definitions: the per-day reads summed (floats summed per day: close, not equal)
    plain = _plain_agents(engine, first, last, zone, start, end, statuses)
    assert sorted(got["user_id"]) == sorted(plain.index)
    for row in got.itertuples(index=False):
        ref = plain.loc[row.user_id]
        assert row.available_seconds == pytest.approx(ref["available_seconds"], abs=1e-6)
        assert row.shift_seconds == ref["shift_seconds"]
        assert row.online_seconds == (
            0.0 if pd.isna(ref["online_seconds"]) else ref["online_seconds"]
        )
        assert row.sessions == (0 if pd.isna(ref["sessions"]) else ref["sessions"])
        for column in ("first_in", "last_out"):
            assert (pd.isna(getattr(row, column)) and pd.isna(ref[column])) or getattr(
                row, column
            ) == ref[column]
    for column in [c for c in plain.columns if c.startswith("in ")]:
        mine = got.set_index("user_id")[column]
        for user, seconds in plain[column].fillna(0.0).items():
            assert mine[user] == pytest.approx(seconds, abs=1e-6)
    assert {c for c in got.columns if c.startswith("in ")} == {
        c for c in plain.columns if c.startswith("in ")
    }
