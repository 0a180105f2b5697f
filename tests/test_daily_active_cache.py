"""The per-zone cache of daily active users (migration 0009) stays exact: after late,
out-of-order and replayed batches, deletes, updates and truncates, cached reads equal
the raw-log definition and the second-by-second brute force, in zones on whole,
half and quarter hours around their DST changes; and the cache is really read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from presence_core import analytics
from presence_core.analytics import daily_active, day_cache, snapshots
from presence_core.database.storage import Transition, write_batch
from tests import test_rollups_reads as reads

CACHE_ZONES = (
    "UTC",
    "America/New_York",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
)


def cached(engine, zone: str) -> dict:
    with engine.connect() as conn:
        rows = conn.execute(
            text("select day, active_users from presence_daily_active where tz = :tz"),
            {"tz": zone},
        ).all()
    return dict(rows)


def agree(engine, zone: str, periods) -> pd.DataFrame:
    got = None
    for lo, hi in periods:
        got = analytics.daily_active_users(engine, lo, hi, zone)
        want = analytics.daily_active_users(engine, lo, hi, zone, rollup=False)
        pd.testing.assert_frame_equal(got, want)
    return got


@reads.database_property
@given(
    plan=reads.batches,
    late=reads.batches,
    ws=st.integers(-3600, reads.SPAN),
    length=st.integers(1, 30 * 3600),
    delete=st.integers(0, 3),
)
@pytest.mark.parametrize("zone", CACHE_ZONES)
def test_cached_days_stay_exact_after_late_writes(engine, zone, plan, late, ws, length, delete):
    reads.write(engine, zone, plan, 0)  # truncates first: every cached day goes
    tz, t0 = ZoneInfo(zone), reads.origin(zone)
    first = t0.astimezone(tz).date() - timedelta(days=1)
    lo = t0 + timedelta(seconds=ws)
    periods = [(first, first + timedelta(days=4)), (lo, lo + timedelta(seconds=length))]
    agree(engine, zone, periods)
    assert len(cached(engine, zone)) >= 4  # the whole past days were kept
    reads.overtake(engine, t0, late, delete, lambda: agree(engine, zone, periods))
    start = datetime.combine(first, datetime.min.time(), tzinfo=tz)
    hi = datetime.combine(first + timedelta(days=5), datetime.min.time(), tzinfo=tz)
    _, active = reads.brute_force(
        reads.stored_rows(engine), tz, int(start.timestamp()), int(hi.timestamp())
    )
    whole = analytics.daily_active_users(engine, first, first + timedelta(days=4), zone)
    assert {r.date: r.active_users for r in whole.itertuples()} == active


def test_the_cache_is_read_and_a_write_before_a_day_ends_replaces_it(engine):
    """A cached day is served as stored (so the cache is what answers); a write at an
    instant before that day's end (even one late by days) replaces it, while days that
    ended before the write keep their stored rows."""
    zone = "Asia/Kathmandu"
    tz = ZoneInfo(zone)
    day0 = datetime(2026, 6, 1, tzinfo=tz)
    rows = [
        Transition(f"u{k}", "online", day0 + timedelta(hours=6 + 24 * k), day0) for k in range(3)
    ]
    write_batch(engine, rows)
    first, last = day0.date(), day0.date() + timedelta(days=4)
    before = analytics.daily_active_users(engine, first, last, zone)
    assert list(before["active_users"]) == [1, 2, 3, 3, 3]
    assert len(cached(engine, zone)) == 5
    with engine.begin() as conn:
        conn.execute(text("update presence_daily_active set active_users = 99"))
    got = analytics.daily_active_users(engine, first, last, zone)
    assert list(got["active_users"]) == [99] * 5  # the cache answers
    late = day0 + timedelta(days=2, hours=23)  # before the third day's end
    write_batch(engine, [Transition("u0", "offline", late, late)])
    got = analytics.daily_active_users(engine, first, last, zone)
    assert list(got["active_users"]) == [99, 99, 3, 2, 2]
    want = analytics.daily_active_users(engine, first, last, zone, rollup=False)
    assert list(want["active_users"]) == [1, 2, 3, 2, 2]
    # other zones' days are cached apart (a Kathmandu day is not a UTC day)
    utc = analytics.daily_active_users(engine, first, last, "UTC")
    pd.testing.assert_frame_equal(
        utc, analytics.daily_active_users(engine, first, last, "UTC", rollup=False)
    )


def test_filtered_and_partial_days_are_not_cached(engine):
    now = datetime.now(UTC)
    today = now.date()
    start = datetime.combine(today - timedelta(days=3), datetime.min.time(), tzinfo=UTC)
    start += timedelta(hours=12)
    write_batch(engine, [Transition("a", "online", start - timedelta(days=1), now)])
    analytics.daily_active_users(engine, start, now, "UTC")
    # the first day is partly in the period, today is not over
    assert cached(engine, "UTC") == {today - timedelta(days=2): 1, today - timedelta(days=1): 1}
    with engine.begin() as conn:
        conn.execute(text("delete from presence_daily_active"))
    analytics.daily_active_users(engine, start, now, "UTC", user_type="agent")
    assert cached(engine, "UTC") == {}


def test_days_a_write_changed_after_the_snapshot_are_not_kept(engine):
    """Figures computed from a snapshot older than a committed write are returned, and
    only the days ending before what that write touched are kept."""
    t = datetime(2026, 5, 4, 10, tzinfo=UTC)
    write_batch(engine, [Transition("a", "online", t, t)])
    days = [
        {
            "tz": "UTC",
            "day": (t + timedelta(days=k)).date(),
            "day_end": t + timedelta(hours=14 + 24 * k),
            "n": 1,
        }
        for k in range(3)
    ]
    with engine.begin() as conn:  # as a read leaves it: the first write's mark cleared
        conn.execute(text("update presence_rollup_state set dirty_from = null"))
    with engine.connect() as conn:
        later = t + timedelta(days=1, hours=1)  # during the second day
        write_batch(engine, [Transition("b", "online", later, later)])
        daily_active._keep(conn, days)
    assert cached(engine, "UTC") == {t.date(): 1}
    with engine.begin() as conn:
        conn.execute(text("delete from presence_daily_active"))
        conn.execute(text("update presence_rollup_state set dirty_from = null"))
    with engine.connect() as conn:
        daily_active._keep(conn, days)  # nothing written since: all kept
    assert len(cached(engine, "UTC")) == 3


def test_a_reader_between_snapshot_and_insert_holds_the_mark(engine):
    """While a reader holds the lock shared, another read does not clear the mark (the
    first reader's insert relies on it), and still answers exactly."""
    t = datetime(2026, 5, 4, 10, tzinfo=UTC)
    write_batch(engine, [Transition("a", "online", t, t)])
    with engine.connect() as holder:
        holder.execute(text("select pg_advisory_lock_shared(:k)"), {"k": day_cache.LOCK})
        holder.commit()
        got = analytics.daily_active_users(engine, t.date(), t.date() + timedelta(days=2), "UTC")
        assert list(got["active_users"]) == [1, 1, 1]
        with engine.connect() as conn:
            assert conn.execute(text(day_cache.STATE)).scalar() == t  # not cleared
        holder.execute(text("select pg_advisory_unlock_shared(:k)"), {"k": day_cache.LOCK})
        holder.commit()
    analytics.daily_active_users(engine, t.date(), t.date() + timedelta(days=2), "UTC")
    with engine.connect() as conn:
        assert conn.execute(text(day_cache.STATE)).scalar() is None


def test_users_listed_or_removed_with_rows_stored_replace_the_days(engine):
    """The counts are of the users in presence_users: one listed (or deleted) there
    while its transitions are already stored changes days that are cached."""
    t = datetime(2026, 5, 4, 10, tzinfo=UTC)
    write_batch(engine, [Transition("a", "online", t, t)])
    with engine.begin() as conn:  # rows of a user not listed yet (a hand-made insert)
        conn.execute(
            text(
                "insert into presence_transitions (user_id, status, occurred_at, received_at)"
                " values ('b', 'online', :t, :t)"
            ),
            {"t": t - timedelta(days=2)},
        )
    first, last = (t - timedelta(days=3)).date(), t.date() + timedelta(days=2)

    def check(expected: list[int]) -> None:
        got = analytics.daily_active_users(engine, first, last, "UTC")
        pd.testing.assert_frame_equal(
            got, analytics.daily_active_users(engine, first, last, "UTC", rollup=False)
        )
        assert list(got["active_users"]) == expected

    check([0, 0, 0, 1, 1, 1])
    with engine.begin() as conn:
        conn.execute(text("insert into presence_users (user_id) values ('b')"))
    check([0, 1, 1, 2, 2, 2])
    with engine.begin() as conn:
        conn.execute(text("delete from presence_users where user_id = 'a'"))
    check([0, 1, 1, 1, 1, 1])


def test_stretches_computed_at_once_equal_one_after_the_other(engine, monkeypatch):
    """A period starting and ending inside days, around cached whole days, has two
    stretches to compute: run at once on two connections, they give the rows of the
    raw-log definition and of one connection computing both in turn."""
    zone = "America/New_York"
    tz = ZoneInfo(zone)
    day0 = datetime(2026, 3, 6, tzinfo=tz)  # the days around New York's DST change
    rows = []
    for k in range(6):
        for u in range(4):
            on = day0 + timedelta(days=k, hours=2 + 5 * u)
            rows += [
                Transition(f"u{u}", "online", on, on),
                Transition(f"u{u}", "offline", on + timedelta(hours=3 + k), on),
            ]
    write_batch(engine, rows)
    first, last = day0.date(), day0.date() + timedelta(days=5)
    analytics.daily_active_users(engine, first, last, zone)  # caches the whole days
    assert len(cached(engine, zone)) == 6
    lo, hi = day0 + timedelta(hours=13), day0 + timedelta(days=4, hours=9)
    assert len(day_cache.runs([0, 4])) == 2  # the ragged first and last days
    at_once = analytics.daily_active_users(engine, lo, hi, zone)
    want = analytics.daily_active_users(engine, lo, hi, zone, rollup=False)
    pd.testing.assert_frame_equal(at_once, want)
    assert list(at_once["active_users"]) == [2, 4, 4, 4, 2]
    monkeypatch.setattr(daily_active, "WORKERS", 1)
    pd.testing.assert_frame_equal(analytics.daily_active_users(engine, lo, hi, zone), want)


def test_a_connection_in_an_exported_snapshot_sees_what_its_exporter_sees(engine):
    """The connections computing stretches at once read the first one's snapshot: a
    write committed after it was taken is seen by neither."""
    t = datetime(2026, 5, 4, 10, tzinfo=UTC)
    write_batch(engine, [Transition("a", "online", t, t)])
    count = text("select count(*) from presence_transitions")
    with engine.connect() as exporter:
        exporter.execute(text("set transaction isolation level repeatable read"))
        snapshot = exporter.execute(text("select pg_export_snapshot()")).scalar()
        write_batch(engine, [Transition("b", "online", t, t)])
        with snapshots.in_snapshot(engine, snapshot) as other:
            assert other.execute(count).scalar() == 1
        with engine.connect() as fresh:
            assert fresh.execute(count).scalar() == 2
    with pytest.raises(ValueError), snapshots.in_snapshot(engine, "1'; drop table x; --"):
        pass
