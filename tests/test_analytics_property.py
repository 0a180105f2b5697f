"""Random transition sequences: the SQL metrics agree with a brute-force,
second-by-second reference written in plain Python.

Times are whole seconds around the 2026-03-08 DST change in New York, so local
days of 23 hours and states carried in from before the window are exercised.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from presence_core import analytics
from presence_core.database.storage import Transition, write_batch

NY = ZoneInfo("America/New_York")
T0 = datetime(2026, 3, 7, 0, tzinfo=UTC)
STATUSES = ("online", "away", "busy", "offline", "offline")
DAY = 86400

users_strategy = st.lists(
    st.lists(
        st.tuples(st.integers(1, 5 * 3600), st.sampled_from(STATUSES)), min_size=0, max_size=14
    ),
    min_size=1,
    max_size=3,
)


def build(seqs: list[list[tuple[int, str]]]) -> dict[str, list[tuple[int, str]]]:
    """Per user, (second offset from T0, status) with strictly increasing times."""
    users = {}
    for i, seq in enumerate(seqs):
        t = -6 * 3600
        rows = []
        for gap, status in seq:
            t += gap
            rows.append((t, status))
        users[f"u{i}"] = rows
    return users


def store(engine, users: dict[str, list[tuple[int, str]]]) -> None:
    with engine.begin() as conn:
        conn.execute(text("delete from presence_transitions"))
        conn.execute(text("delete from presence_users"))
    batch = [
        Transition(u, s, T0 + timedelta(seconds=t), T0 + timedelta(seconds=t))
        for u, rows in users.items()
        for t, s in rows
    ]
    if batch:
        write_batch(engine, batch)


def at(s: int) -> datetime:
    return T0 + timedelta(seconds=s)


def offset(moment: datetime) -> int:
    return int((moment - T0).total_seconds())


def state_at(rows: list[tuple[int, str]], s: int) -> str:
    """The status in force at second ``s``: the last transition at or before it."""
    i = bisect_right([t for t, _ in rows], s)
    return rows[i - 1][1] if i else "offline"


def local_midnights() -> list[tuple[int, date]]:
    """(offset, date) of each New York midnight around the test span."""
    out = []
    for k in range(-2, 6):
        d = date(2026, 3, 6) + timedelta(days=k)
        out.append((offset(datetime.combine(d, time(0), tzinfo=NY).astimezone(UTC)), d))
    return out


def ref_sessions(rows, ws, we):
    """Sessions overlapping [ws, we): (start, end, open), from the definition."""
    out, opened = [], None
    for t, status in rows:
        if t >= we:
            break
        if status != "offline" and opened is None:
            opened = t
        elif status == "offline" and opened is not None:
            out.append((opened, t, False))
            opened = None
    if opened is not None:
        out.append((opened, we, True))
    return [x for x in out if x[1] > ws]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seqs=users_strategy,
    ws=st.integers(-3 * 3600, 2 * DAY),
    length=st.integers(1, DAY),
)
# a whole day across the New York DST change, long enough for the minute rollup
@example(
    seqs=[
        [(3600, "online"), (7200, "away"), (9000, "offline"), (18000, "busy"), (4000, "offline")],
        [(25000, "online"), (40000, "online"), (30000, "offline")],
        [(100, "busy"), (17000, "online")],
    ],
    ws=DAY + 1234,
    length=DAY,
)
def test_sessions_online_seconds_and_concurrency_match_brute_force(engine, seqs, ws, length):
    users = build(seqs)
    store(engine, users)
    we = ws + length

    # sessions
    got = analytics.sessions(engine, at(ws), at(we))
    got_set = {
        (r.user_id, offset(r.started_at), offset(r.ended_at), bool(r.open))
        for r in got.itertuples()
    }
    want_set = {(u, a, b, o) for u, rows in users.items() for a, b, o in ref_sessions(rows, ws, we)}
    assert got_set == want_set

    # one pass, second by second: online seconds per local (New York) day and
    # hourly concurrency (UTC hours)
    online: dict[tuple[str, date], int] = {}
    buckets: dict[int, list[int]] = {}
    pointers = dict.fromkeys(users, 0)
    states = dict.fromkeys(users, "offline")
    midnights = local_midnights()
    m = 0
    for s in range(ws, we):
        while m + 1 < len(midnights) and midnights[m + 1][0] <= s:
            m += 1
        day = midnights[m][1]
        present = 0
        for u, rows in users.items():
            i = pointers[u]
            while i < len(rows) and rows[i][0] <= s:
                states[u] = rows[i][1]
                i += 1
            pointers[u] = i
            if states[u] != "offline":
                present += 1
                online[(u, day)] = online.get((u, day), 0) + 1
        label = (s // 3600) * 3600
        buckets.setdefault(label, []).append(present)

    got_online = analytics.online_seconds(engine, at(ws), at(we), NY)
    assert {(r.user_id, r.date): r.online_seconds for r in got_online.itertuples()} == online

    want_conc = {b: (max(v), sum(v) / len(v)) for b, v in buckets.items()}
    for quarters in (True, False):  # both levels of the rollup (quarter-hours, minutes)
        got_conc = analytics.concurrency(engine, at(ws), at(we), "hour", "UTC", quarters=quarters)
        assert [offset(b) for b in got_conc["bucket"]] == sorted(want_conc)
        for row in got_conc.itertuples():
            peak, mean = want_conc[offset(row.bucket)]
            assert row.peak == peak
            assert row.mean == pytest.approx(mean)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seqs=users_strategy,
    h0=st.integers(0, 23),
    hours=st.integers(1, 3),
    statuses=st.sampled_from([("online",), ("online", "away")]),
)
def test_availability_matches_brute_force(engine, seqs, h0, hours, statuses):
    users = build(seqs)
    store(engine, users)
    days = [date(2026, 3, 7), date(2026, 3, 8), date(2026, 3, 9)]
    h1 = (h0 + hours) % 24  # past midnight: a night shift ending the next day
    got = analytics.availability(engine, days[0], days[-1], NY, time(h0), time(h1), statuses)
    got_map = {
        (r.user_id, r.date): (r.available_seconds, r.shift_seconds) for r in got.itertuples()
    }
    for d in days:
        lo = offset(datetime.combine(d, time(h0), tzinfo=NY).astimezone(UTC))
        end_day = d + timedelta(days=1) if h1 <= h0 else d
        hi = offset(datetime.combine(end_day, time(h1), tzinfo=NY).astimezone(UTC))
        for u, rows in users.items():
            if not rows:  # never seen: not a user
                continue
            available = sum(1 for s in range(lo, hi) if state_at(rows, s) in statuses)
            assert got_map[(u, d)] == (available, hi - lo)
