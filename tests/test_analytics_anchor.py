"""The backward probes (the last offline before a period, for the raw log's segments;
the last transition before a window, for the summaries' ragged edges) look in the
week before first, then further back: both sides of that week, and nothing at all,
give the same sessions, seconds and concurrency as the definitions say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from presence_core import analytics
from presence_core.database.storage import Transition, write_batch

START = datetime(2026, 6, 20, 12, 0, 7, tzinfo=UTC)


def at(days: float) -> datetime:
    return START - timedelta(days=days)


def test_anchors_inside_and_beyond_the_week_before(engine):
    rows = [
        # online for 9 days across the week's edge: its session started 9 days ago
        ("a", "offline", at(10)),
        ("a", "online", at(9)),
        # a week inside: offline 3 days ago, online 2 days ago
        ("b", "offline", at(3)),
        ("b", "online", at(2)),
        # gone 8 days ago: absent
        ("c", "online", at(20)),
        ("c", "offline", at(8)),
        # never offline: online since 30 days ago, found with no offline at all
        ("d", "busy", at(30)),
        # a change inside the period after a long quiet spell
        ("e", "away", at(40)),
        ("e", "online", START + timedelta(hours=3)),
    ]
    write_batch(engine, [Transition(u, s, t, t) for u, s, t in rows])
    end = START + timedelta(hours=6)
    sessions = analytics.sessions(engine, START, end, include_hidden=True)
    got = {r.user_id: r.started_at.to_pydatetime() for r in sessions.itertuples()}
    assert got == {"a": at(9), "b": at(2), "d": at(30), "e": at(40)}
    assert sessions["open"].all()
    for zone in ("UTC", "Asia/Kathmandu"):
        fast = analytics.time_in_status(engine, START, end, zone)
        slow = analytics.time_in_status(engine, START, end, zone, rollup=False)
        pd.testing.assert_frame_equal(fast, slow, check_dtype=False)
        per_user = fast.groupby("user_id")["seconds"].sum().to_dict()
        assert per_user == {u: 6 * 3600.0 for u in "abde"}
    conc = analytics.concurrency(engine, START, end, "hour", "UTC")
    raw = analytics.concurrency(engine, START, end, "hour", "UTC", rollup=False)
    pd.testing.assert_frame_equal(conc, raw, check_exact=False, rtol=1e-12)
    assert conc["peak"].tolist() == [4] * 7
