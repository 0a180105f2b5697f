"""Concurrency read through the rollup and the status tails (``rollup=True``: whole
quarter-hours and minutes from the rollup, the edges and short or filtered periods
from segments found through ``presence_status_tails``) equals the raw log's, for
random histories written late, out of order and replayed, periods of any alignment,
every bucket, zones on half and quarter hours, filters; and a second-by-second count.
The two levels of the rollup (quarters over minutes, minutes only) give identical
figures (``==``), before and after late writes, deletes and a truncate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from presence_core import analytics
from presence_core.analytics.rollups import floor_quarter, rollup_valid_until
from presence_core.database.storage import Transition, write_batch
from tests import test_rollups_reads as reads


@reads.database_property
@given(
    plan=reads.batches,
    replay=st.integers(0, 2),
    ws=st.integers(-3600, reads.SPAN),
    length=st.integers(1, 40 * 3600),
    micro=st.sampled_from((0, 0, 1, 500_000, 999_999)),
    bucket=st.sampled_from(("minute", "5 minutes", "hour", "day", "hour", "day")),
    statuses=st.sampled_from((None, ("online",), ("away", "busy"))),
    late=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, reads.SPAN), st.sampled_from(reads.STATUSES)),
        max_size=4,
    ),
    cut=st.one_of(st.none(), st.tuples(st.integers(0, 2), st.integers(0, reads.SPAN))),
)
@pytest.mark.parametrize(
    "zone", ["UTC", "Asia/Kathmandu", "Australia/Lord_Howe", "Pacific/Chatham"]
)
def test_concurrency_through_rollup_and_tails_equals_raw(
    engine, zone, plan, replay, ws, length, micro, bucket, statuses, late, cut
):
    reads.write(engine, zone, plan, replay)
    lo = reads.origin(zone) + timedelta(seconds=ws, microseconds=micro)
    hi = lo + timedelta(seconds=length)

    def both(**kwargs) -> pd.DataFrame:
        got = analytics.concurrency(engine, lo, hi, bucket, zone, **kwargs)
        minutes = analytics.concurrency(engine, lo, hi, bucket, zone, quarters=False, **kwargs)
        pd.testing.assert_frame_equal(got, minutes, check_exact=True)  # the levels: ==
        want = analytics.concurrency(engine, lo, hi, bucket, zone, rollup=False, **kwargs)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9, atol=1e-9)
        return got

    both()
    both(statuses=statuses)
    # a team: its segments from the sessions (a long period) or the tails (a short one)
    with engine.begin() as conn:
        conn.execute(text("update presence_users set team = 'red' where user_id in ('u0', 'u2')"))
    both(team="red")
    # late rows (any second, inside what the rollup already holds) and a deleted tail
    t0 = reads.origin(zone)
    write_batch(engine, [Transition(f"u{u}", s, t0 + timedelta(seconds=t), t0) for u, t, s in late])
    if cut is not None:
        with engine.begin() as conn:
            conn.execute(
                text("delete from presence_transitions where user_id = :u and occurred_at >= :t"),
                {"u": f"u{cut[0]}", "t": t0 + timedelta(seconds=cut[1])},
            )
    changed = both()
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
                int(b.timestamp()): p
                for b, p in zip(changed["bucket"], changed["peak"], strict=True)
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


# --- the quarter-hours above the minutes (migration 0010) --------------------------------


def _quarters_match_their_minutes(engine) -> int:
    """Every valid quarter is its minutes' max and sum; returns how many there are."""
    with engine.connect() as conn:
        valid = rollup_valid_until(conn)
        rows = conn.execute(
            text(
                "select q.quarter, q.peak, q.user_seconds, m.peak, m.user_seconds"
                " from presence_concurrency_quarters q full join ("
                "   select date_bin(interval '15 minutes', minute,"
                "                   timestamptz '2000-01-01 00:00:00+00') as quarter,"
                "          max(peak) as peak, sum(user_seconds) as user_seconds"
                "   from presence_concurrency_minutes group by 1) m using (quarter)"
                " where quarter + interval '15 minutes' <= :v"
            ),
            {"v": valid},
        ).all()
    assert rows and all(r[1:3] == r[3:5] for r in rows), [r for r in rows if r[1:3] != r[3:5]]
    return len(rows)


def _levels(engine, lo, hi, bucket, zone) -> pd.DataFrame:
    """The quarters' read, equal (==) to the minutes' and (to rounding) the raw log's."""
    got = analytics.concurrency(engine, lo, hi, bucket, zone)
    minutes = analytics.concurrency(engine, lo, hi, bucket, zone, quarters=False)
    pd.testing.assert_frame_equal(got, minutes, check_exact=True)
    raw = analytics.concurrency(engine, lo, hi, bucket, zone, rollup=False)
    pd.testing.assert_frame_equal(got, raw, check_exact=False, rtol=1e-9, atol=1e-9)
    return got


def _history(t0: datetime, users: int, days: int) -> list[Transition]:
    """Each user in and out a few times a day, on seconds that are not on minutes."""
    rows = []
    for u in range(users):
        for d in range(days):
            for k, status in enumerate(("online", "away", "offline", "busy", "offline")):
                at = t0 + timedelta(days=d, hours=2 + 4 * k + u, seconds=17 * u + 7 * k + 5)
                rows.append(Transition(f"u{u}", status, at, at))
    return rows


ISSUE_ZONES = ("Asia/Kathmandu", "Pacific/Chatham", "Australia/Lord_Howe")


@pytest.mark.parametrize("zone", ISSUE_ZONES)
def test_quarters_follow_late_writes_deletes_and_a_truncate(engine, zone):
    t0 = reads.origin(zone)  # 30 hours before the zone's offset change (DST)
    write_batch(engine, _history(t0, 4, 3))
    lo, hi = t0 + timedelta(seconds=41), t0 + timedelta(days=3, minutes=7)

    def check() -> None:
        for bucket in ("hour", "day"):
            _levels(engine, lo, hi, bucket, zone)
        _quarters_match_their_minutes(engine)

    check()
    assert _quarters_match_their_minutes(engine) > 4 * 24 * 2
    # a late row less than ROLLUP_WORTH before the end: read without a refresh, the
    # rollup up to the whole minute before it, the rest from the segments
    near = hi - timedelta(hours=5, minutes=30, seconds=29)  # while u1, u2 and u3 are in
    write_batch(engine, [Transition("near", "online", near, near)])
    check()
    # a late row in the middle of a quarter already rolled up (dirty from mid-minute)
    late = t0 + timedelta(days=1, hours=3, minutes=7, seconds=31)
    write_batch(engine, [Transition("late", "online", late, late)])
    check()
    write_batch(engine, [Transition("late", "offline", late + timedelta(hours=9, seconds=3), late)])
    check()
    with engine.begin() as conn:
        conn.execute(
            text("delete from presence_transitions where user_id = 'u1' and occurred_at >= :t"),
            {"t": t0 + timedelta(days=1, hours=20, seconds=3)},
        )
    check()
    with engine.begin() as conn:
        conn.execute(text("truncate presence_transitions"))
    later = t0 + timedelta(days=1, minutes=22)
    write_batch(engine, _history(later, 2, 1))
    check()
    with engine.connect() as conn:
        first = conn.execute(text("select min(quarter) from presence_concurrency_quarters"))
        # nothing left from before the truncate: the first quarter is the new first row's
        assert first.scalar() == floor_quarter(later + timedelta(hours=2, seconds=5))


def test_long_hourly_and_daily_reads_use_the_quarters(engine):
    """Tampering with the quarters shows in hourly and daily reads (so they are read), not
    in minute buckets nor with ``quarters=False``."""
    t0 = reads.origin("Asia/Kathmandu")
    write_batch(engine, _history(t0, 3, 2))
    lo, hi = t0, t0 + timedelta(days=2)
    before = {b: _levels(engine, lo, hi, b, "Asia/Kathmandu") for b in ("hour", "day", "5 minutes")}
    with engine.begin() as conn:
        conn.execute(text("update presence_concurrency_quarters set peak = peak + 1000"))
    for bucket, frame in before.items():
        got = analytics.concurrency(engine, lo, hi, bucket, "Asia/Kathmandu")
        minutes = analytics.concurrency(engine, lo, hi, bucket, "Asia/Kathmandu", quarters=False)
        pd.testing.assert_frame_equal(minutes, frame)
        assert (got["peak"] >= 1000).any() == (bucket != "5 minutes")


def test_a_zone_off_the_quarter_hours_falls_back_to_the_minutes(engine):
    """Singapore kept +07:20 from 1933 to 1941: its hours and days start inside UTC
    quarter-hours, so the rollup answers from its minutes, still exactly. (Not Amsterdam's
    +00:20 of 1937: PostgreSQL's own zone data, without the tz "backzone", has it as
    Brussels; the system's, which Python reads, does not.)"""
    zone = "Asia/Singapore"
    t0 = datetime(1938, 1, 10, tzinfo=UTC)
    with engine.connect() as conn:
        offset = conn.execute(
            text("select :t at time zone cast(:z as text) - :t at time zone 'UTC'"),
            {"t": t0, "z": zone},
        ).scalar()
    assert offset == timedelta(hours=7, minutes=20)  # the database's zone data says so too
    write_batch(engine, _history(t0, 3, 3))
    lo, hi = t0 + timedelta(hours=1), t0 + timedelta(days=3)
    for bucket in ("hour", "day"):
        _levels(engine, lo, hi, bucket, zone)
    with engine.begin() as conn:
        conn.execute(text("update presence_concurrency_quarters set peak = peak + 1000"))
    for bucket in ("hour", "day"):
        assert analytics.concurrency(engine, lo, hi, bucket, zone)["peak"].max() < 1000
        assert analytics.concurrency(engine, lo, hi, bucket, "UTC")["peak"].max() >= 1000


def test_bucket_starts_off_the_minutes_in_the_database_fall_back_to_the_raw_log(engine):
    """The buckets are placed by PostgreSQL's zone data, which can differ from the
    system's that Python reads: Oslo in March 1893 is +00:43 for Python (whole minutes)
    and Berlin's +00:53:28 for PostgreSQL (its build has no tz "backzone"). The rollup
    read notices the bucket starts inside minutes and the raw log answers: still exact."""
    zone = "Europe/Oslo"
    t0 = datetime(1893, 3, 25, tzinfo=UTC)
    with engine.connect() as conn:
        offset = conn.execute(
            text("select :t at time zone cast(:z as text) - :t at time zone 'UTC'"),
            {"t": t0, "z": zone},
        ).scalar()
    assert offset == timedelta(minutes=53, seconds=28)
    write_batch(engine, _history(t0, 3, 10))
    lo, hi = t0 + timedelta(hours=1), t0 + timedelta(days=10)
    for bucket in ("hour", "day"):
        _levels(engine, lo, hi, bucket, zone)
