"""Reads from the summaries kept on write agree with the raw-log definitions (``==``)
and with a brute-force, second-by-second reference, in time zones whose offsets
are whole hours, half hours and quarter hours, around their DST changes (Lord
Howe moves by 30 minutes), for histories written out of order, late and replayed.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from presence_core import analytics
from presence_core.analytics import summaries
from presence_core.database.storage import Transition, write_batch

ZONES = (
    "UTC",
    "America/New_York",
    "Europe/London",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Adelaide",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
)
STATUSES = ("online", "away", "busy", "offline", "offline")
SPAN = 3 * 86400  # seconds of history around the zone's DST change


@cache
def origin(zone: str) -> datetime:
    """30 hours before the zone's first offset change of 2026 (or 2026-03-07)."""
    tz = ZoneInfo(zone)
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    first = moment.astimezone(tz).utcoffset()
    while moment.year == 2026:
        if moment.astimezone(tz).utcoffset() != first:
            return moment - timedelta(hours=30)
        moment += timedelta(minutes=15)
    return datetime(2026, 3, 7, tzinfo=UTC)


def test_the_zones_change_offset_inside_the_span():
    for zone in ZONES[1:]:
        if zone in ("Asia/Kolkata", "Asia/Kathmandu"):
            continue
        tz, t0 = ZoneInfo(zone), origin(zone)
        assert t0.astimezone(tz).utcoffset() != (t0 + timedelta(days=2)).astimezone(tz).utcoffset()


def stored_rows(engine) -> dict[str, list[tuple[int, str]]]:
    """Per user, (epoch second, status) in the order of the definition (occurred_at, id)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "select user_id, extract(epoch from occurred_at)::bigint, status"
                " from presence_transitions order by occurred_at, id"
            )
        ).all()
    out: dict[str, list[tuple[int, str]]] = {}
    for user, at, status in rows:
        out.setdefault(user, []).append((at, status))
    return out


def state(rows: list[tuple[int, str]], s: int) -> str | None:
    i = bisect_right([t for t, _ in rows], s)
    return rows[i - 1][1] if i else None


def local_days(zone: ZoneInfo, lo: int, hi: int) -> list[tuple[int, date]]:
    """(epoch second of local midnight, date) for each local day overlapping [lo, hi)."""
    day = datetime.fromtimestamp(lo, UTC).astimezone(zone).date()
    out = []
    while True:
        start = int(datetime.combine(day, time(0), tzinfo=zone).timestamp())
        if start >= hi:
            return out
        out.append((start, day))
        day += timedelta(days=1)


def brute_force(users, zone: ZoneInfo, lo: int, hi: int):
    """Seconds per (date, user, status) and the active users per date, second by second."""
    seconds: dict[tuple[date, str, str], int] = {}
    active: dict[date, set[str]] = {d: set() for _, d in local_days(zone, lo, hi)}
    midnights = local_days(zone, lo, hi)
    for user, rows in users.items():
        m = 0
        for s in range(lo, hi):
            while m + 1 < len(midnights) and midnights[m + 1][0] <= s:
                m += 1
            status = state(rows, s)
            if status is None or status == "offline":
                continue
            day = midnights[m][1]
            seconds[(day, user, status)] = seconds.get((day, user, status), 0) + 1
            active[day].add(user)
    return seconds, {d: len(u) for d, u in active.items()}


batches = st.lists(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, SPAN), st.sampled_from(STATUSES)),
        min_size=1,
        max_size=10,
    ),
    min_size=1,
    max_size=5,
)

# the settings of the property tests that write random histories to the database
# (a function-scoped database fixture; slow examples): shared by the summaries' tests
database_property = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def write(engine, zone: str, plan, replay: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("truncate presence_transitions"))
        conn.execute(text("delete from presence_users"))
    t0 = origin(zone)
    written = []
    for batch in plan:  # in the order drawn: late and out-of-order batches
        rows = [
            Transition(f"u{u}", s, t0 + timedelta(seconds=t), t0 + timedelta(seconds=t))
            for u, t, s in batch
        ]
        write_batch(engine, rows)
        written.append(rows)
    for i in range(replay):
        assert write_batch(engine, written[i % len(written)]).inserted == 0


def overtake(engine, t0: datetime, late, delete: int, check: Callable[[], object]) -> None:
    """Every way a write can overtake what a cache already holds, ``check`` after each:
    late and out-of-order batches (``late``, offsets from ``t0``), a replay that must
    insert nothing, then the ``delete`` latest rows deleted and the first row moved
    seven hours earlier."""
    for batch in late:
        rows = [
            Transition(f"u{u}", s, t0 + timedelta(seconds=t), t0 + timedelta(seconds=t))
            for u, t, s in batch
        ]
        write_batch(engine, rows)
        check()
    assert write_batch(engine, rows).inserted == 0  # a replay
    with engine.begin() as conn:
        conn.execute(
            text(
                "delete from presence_transitions where id in"
                " (select id from presence_transitions order by occurred_at desc, id limit :n)"
            ),
            {"n": delete},
        )
        conn.execute(  # moved earlier (unless that would repeat a stored row)
            text(
                "update presence_transitions t set occurred_at = t.occurred_at - interval '7 h'"
                " where t.id = (select min(id) from presence_transitions) and not exists ("
                " select 1 from presence_transitions x where x.user_id = t.user_id"
                " and x.status = t.status and x.occurred_at = t.occurred_at - interval '7 h')"
            )
        )
    check()


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plan=batches,
    replay=st.integers(0, 2),
    ws=st.integers(-3600, SPAN),
    length=st.integers(1, 30 * 3600),
)
@pytest.mark.parametrize("zone", ZONES)
def test_rollup_reads_match_raw_and_brute_force(engine, zone, plan, replay, ws, length):
    write(engine, zone, plan, replay)
    tz, t0 = ZoneInfo(zone), origin(zone)
    lo = t0 + timedelta(seconds=ws)
    hi = lo + timedelta(seconds=length)

    rolled = analytics.time_in_status(engine, lo, hi, zone)
    raw = analytics.time_in_status(engine, lo, hi, zone, rollup=False)
    pd.testing.assert_frame_equal(rolled, raw, check_dtype=False)

    dau = analytics.daily_active_users(engine, lo, hi, zone)
    dau_raw = analytics.daily_active_users(engine, lo, hi, zone, rollup=False)
    pd.testing.assert_frame_equal(dau, dau_raw)

    lengths = analytics.session_length_distribution(engine, lo, hi, bins=(0, 60, 3600, 7200))
    pd.testing.assert_frame_equal(
        lengths,
        analytics.session_length_distribution(
            engine, lo, hi, bins=(0, 60, 3600, 7200), rollup=False
        ),
    )

    daily = analytics.daily_summary(engine, lo, hi, zone)
    daily_raw = analytics.daily_summary(engine, lo, hi, zone, rollup=False)
    pd.testing.assert_frame_equal(daily, daily_raw, check_dtype=False)

    seconds, active = brute_force(stored_rows(engine), tz, int(lo.timestamp()), int(hi.timestamp()))
    assert {(r.date, r.user_id, r.status): r.seconds for r in rolled.itertuples()} == seconds
    assert {r.date: r.active_users for r in dau.itertuples()} == active
    online = summaries.status_seconds(engine, lo, hi, zone, statuses=("online", "busy"))
    want: dict[tuple[date, str], int] = {}
    for (d, user, status), n in seconds.items():
        if status in ("online", "busy"):
            want[(d, user)] = want.get((d, user), 0) + n
    assert {(r.date, r.user_id): r.seconds for r in online.itertuples()} == want


@pytest.mark.parametrize("zone", ["Asia/Kathmandu", "Australia/Lord_Howe", "Pacific/Chatham"])
def test_whole_local_days_and_the_raw_path_for_offline(engine, zone):
    """Dates as periods (local midnights on quarter-hours), sub-second times, offline
    asked for (the raw path answers), and a zone of the 1920s whose offset was not on a
    quarter-hour: every local midnight's quarter-hour is read raw, still exact."""
    t0 = origin(zone)
    rows = []
    for k in range(40):
        at = t0 + timedelta(minutes=97 * k, microseconds=123_457 * k)
        rows.append(Transition(f"u{k % 3}", STATUSES[k % 5], at, at))
    write_batch(engine, rows[1::2])
    write_batch(engine, rows[0::2])  # every other row arrives late
    day = t0.astimezone(ZoneInfo(zone)).date()
    for kwargs in ({}, {"statuses": ("offline", "online")}):
        got = analytics.time_in_status(engine, day, day + timedelta(days=2), zone, **kwargs)
        want = analytics.time_in_status(
            engine, day, day + timedelta(days=2), zone, rollup=False, **kwargs
        )
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
        assert not got.empty
    daily = analytics.daily_summary(engine, day, day + timedelta(days=2), zone)
    pd.testing.assert_frame_equal(
        daily,
        analytics.daily_summary(engine, day, day + timedelta(days=2), zone, rollup=False),
        check_dtype=False,
    )
    # Amsterdam kept +00:19:32 until 1937: its midnights fall inside quarter-hours
    old = datetime(1930, 5, 1, tzinfo=UTC)
    write_batch(
        engine,
        [
            Transition("v", s, old + timedelta(minutes=41 * k), old + timedelta(minutes=41 * k))
            for k, s in enumerate(STATUSES * 20)
        ],
    )
    for zone_1930 in ("Europe/Amsterdam", "UTC"):
        got = analytics.time_in_status(engine, old, old + timedelta(days=2), zone_1930)
        want = analytics.time_in_status(
            engine, old, old + timedelta(days=2), zone_1930, rollup=False
        )
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
        assert len(got["date"].unique()) == (2 if zone_1930 == "UTC" else 3)


def test_open_sessions_end_now(engine):
    """A session still open counts up to now, from the tail, like the raw path."""
    now = datetime.now(UTC)
    start = now - timedelta(days=1, hours=3, minutes=7, seconds=11)
    write_batch(
        engine,
        [
            Transition("a", "online", start, start),
            Transition("a", "busy", now - timedelta(hours=5), now - timedelta(hours=5)),
            Transition("b", "away", now - timedelta(minutes=3), now - timedelta(minutes=3)),
        ],
    )
    for zone in ("Asia/Kathmandu", "America/New_York"):
        first = (now - timedelta(days=3)).date()
        got = analytics.time_in_status(engine, first, None, zone)
        want = analytics.time_in_status(engine, first, None, zone, rollup=False)
        # "now" moves between the two reads: compare all but the last day's open parts
        last = got["date"].max()
        pd.testing.assert_frame_equal(
            got[got["date"] < last].reset_index(drop=True),
            want[want["date"] < last].reset_index(drop=True),
            check_dtype=False,
        )
        end = now - timedelta(seconds=1)
        got = analytics.daily_summary(engine, first, end, zone)
        want = analytics.daily_summary(engine, first, end, zone, rollup=False)
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
        assert got["sessions"].sum() >= 2


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plan=batches,
    spans=st.lists(
        st.tuples(st.integers(-3600, SPAN), st.integers(1, 20 * 3600)), min_size=1, max_size=4
    ),
)
@pytest.mark.parametrize("zone", ["Australia/Lord_Howe", "Asia/Kathmandu"])
def test_status_seconds_in_spans_match_brute_force(engine, zone, plan, spans):
    """Shifts of any length and alignment (night shifts across midnight, DST nights):
    the span read agrees with a second-by-second count over the stored log."""
    write(engine, zone, plan, 0)
    t0 = origin(zone)
    keyed = [
        (
            date(2026, 1, 1) + timedelta(days=i),
            t0 + timedelta(seconds=a),
            t0 + timedelta(seconds=a + n),
        )
        for i, (a, n) in enumerate(spans)
    ]
    got = summaries.status_seconds_in_spans(engine, keyed, ("online", "away"))
    users = stored_rows(engine)
    want = {}
    for key, lo, hi in keyed:
        for user, rows in users.items():
            n = sum(
                1
                for s in range(int(lo.timestamp()), int(hi.timestamp()))
                if state(rows, s) in ("online", "away")
            )
            if n:
                want[(key, user)] = n
    assert {(r.key, r.user_id): r.seconds for r in got.itertuples()} == want
