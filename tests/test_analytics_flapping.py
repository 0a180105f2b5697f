"""Flapping users: the array check (each user's sorted times, a transition against
the (n - 1)-th next one, then an exact count from the starts found) never drops a
user the sliding-window definition keeps and reports the same counts and the same
earliest busiest window, in the same order, read in one statement or with the users
split into ranges; checked against a brute-force count over random histories
with several transitions at one instant, equally busy windows, any window and any
threshold; and the whole past UTC days kept to narrow the users (migration 0013)
stay exact after late writes, are really read, and nothing of a day not over (with
a window after it) is kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from presence_core import analytics
from presence_core.database.storage import Transition, write_batch

T0 = datetime(2026, 5, 4, 10, tzinfo=UTC)
MIDNIGHT = datetime(2026, 5, 5, tzinfo=UTC)


def kept(engine) -> dict:
    with engine.connect() as conn:
        rows = conn.execute(text("select day, user_ids from presence_flapping_days")).all()
    return {day: sorted(users) for day, users in rows}


def reference(engine, lo: datetime, hi: datetime, min_n: int, window: timedelta) -> list:
    """(user, transitions, max in a window, where the busiest window starts), brute force."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "select user_id, occurred_at from presence_transitions"
                " where occurred_at >= :lo and occurred_at < :hi"
            ),
            {"lo": lo, "hi": hi},
        ).all()
    per_user: dict[str, list[datetime]] = {}
    for user, at in rows:
        per_user.setdefault(user, []).append(at)
    out = []
    for user, times in per_user.items():
        best, start = 0, None
        for t in sorted(times):
            n = sum(1 for x in times if t <= x < t + window)
            if n > best:
                best, start = n, t
        if best >= min_n:
            out.append((user, len(times), best, start))
    return sorted(out, key=lambda r: (-r[2], -r[1], r[0]))


# (user, second, microsecond, status): microseconds make spans end a microsecond short
ROWS = st.lists(
    st.tuples(
        st.integers(0, 4),
        st.integers(0, 1800),
        st.sampled_from((0, 1, 999_999)),
        st.sampled_from(("online", "away", "busy", "offline")),
    ),
    max_size=60,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=ROWS,
    min_n=st.integers(-1, 7),
    window=st.integers(1, 900),
    lo=st.integers(-60, 900),
    length=st.integers(1, 2400),
)
def test_flapping_users_match_brute_force(engine, rows, min_n, window, lo, length):
    check(engine, rows, min_n, window, lo, length)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 2),
            st.integers(0, 40).map(lambda k: 30 * k),  # a coarse grid: equally busy windows
            st.sampled_from((0, 1)),
            st.sampled_from(("online", "away", "offline")),
        ),
        min_size=4,
        max_size=40,
    ),
    min_n=st.integers(1, 4),
    window=st.sampled_from((30, 60, 90, 120)),
)
def test_equally_busy_windows_report_the_earliest(engine, rows, min_n, window):
    """Dense histories on a grid, where several windows hold the busiest count: the
    earliest one is reported, as the brute force does."""
    check(engine, rows, min_n, window, -60, 1500)


def check(engine, rows, min_n: int, window: int, lo: int, length: int) -> None:
    """Store ``rows`` (user, seconds, microseconds, status after T0) alone and compare
    flapping_users (in one statement and split by users) with the brute force over the
    period ``lo`` s after T0, ``length`` long."""
    with engine.begin() as conn:
        conn.execute(text("truncate presence_transitions"))
        conn.execute(text("delete from presence_users"))
    write_batch(
        engine,
        [
            Transition(f"u{u}", s, T0 + timedelta(seconds=t, microseconds=us), T0)
            for u, t, us, s in rows
        ],
    )
    start = T0 + timedelta(seconds=lo)
    end = start + timedelta(seconds=length)
    span = timedelta(seconds=window)
    expected = reference(engine, start, end, min_n, span)
    for workers in (1, 2, 3):  # one statement, or users split into ranges read at once
        got = analytics.flapping_users(engine, start, end, min_n, span, workers=workers)
        found = [
            (r.user_id, r.transitions, r.max_in_window, r.burst_start.to_pydatetime())
            for r in got.itertuples()
        ]
        assert found == expected, workers


def test_a_window_holds_what_starts_a_microsecond_before_its_end(engine):
    """Six changes within 10 minutes less a microsecond flap; 10 minutes exactly do not
    (a window of length W holds [t, t + W)); ties at one instant all count."""
    for last, flagged in (
        (timedelta(minutes=10, microseconds=-1), True),
        (timedelta(minutes=10), False),
    ):
        with engine.begin() as conn:
            conn.execute(text("truncate presence_transitions"))
        times = [T0, T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2), T0 + last]
        statuses = ["online", "away", "busy", "online", "offline"]
        rows = [Transition("f", s, t, T0) for s, t in zip(statuses, times, strict=True)]
        rows.append(Transition("f", "away", T0 + timedelta(minutes=3), T0))
        write_batch(engine, rows)
        got = analytics.flapping_users(
            engine, T0, T0 + timedelta(hours=1), 6, timedelta(minutes=10)
        )
        assert got["user_id"].tolist() == (["f"] if flagged else [])
        assert reference(engine, T0, T0 + timedelta(hours=1), 6, timedelta(minutes=10)) == (
            [("f", 6, 6, T0)] if flagged else []
        )


def test_the_earliest_of_equally_busy_windows_is_the_burst(engine):
    """Two bursts of six changes: the first is reported, whichever is read first; a
    team filter keeps only that team's users (the filters apply before any row is read)."""
    with engine.begin() as conn:
        conn.execute(text("truncate presence_transitions"))
        conn.execute(text("delete from presence_users"))
    rows = []
    for user, first in (("late", T0 + timedelta(minutes=30)), ("early", T0)):
        for burst in (first, first + timedelta(minutes=20)):
            rows += [
                Transition(user, ("online", "away")[i % 2], burst + timedelta(seconds=i), T0)
                for i in range(6)
            ]
    write_batch(engine, rows)
    with engine.begin() as conn:
        conn.execute(text("update presence_users set team = 'red' where user_id = 'early'"))
    hour = T0 + timedelta(hours=2)
    got = analytics.flapping_users(engine, T0, hour, 6, timedelta(minutes=10))
    assert got["user_id"].tolist() == ["early", "late"]
    assert got["transitions"].tolist() == [12, 12]
    assert got["max_in_window"].tolist() == [6, 6]
    assert [t.to_pydatetime() for t in got["burst_start"]] == [T0, T0 + timedelta(minutes=30)]
    red = analytics.flapping_users(engine, T0, hour, 6, timedelta(minutes=10), team="red")
    assert red["user_id"].tolist() == ["early"]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(-1, 2),  # a day from the midnight MIDNIGHT
            st.integers(-1200, 1200),  # seconds around that day's midnight
            st.sampled_from((0, 1, 999_999)),
            st.sampled_from(("online", "away", "offline")),
        ),
        max_size=60,
    ),
    late=st.lists(
        st.tuples(
            st.integers(0, 4),
            st.integers(-1, 2),
            st.integers(-1200, 1200),
            st.sampled_from((0, 1)),
            st.sampled_from(("online", "busy", "offline")),
        ),
        min_size=1,
        max_size=12,
    ),
    min_n=st.integers(2, 6),
    window=st.integers(1, 900),
    lo=st.integers(-2 * 86400, 86400),
    length=st.integers(1, 4 * 86400),
)
def test_kept_days_narrow_exactly_across_midnights_and_late_writes(
    engine, rows, late, min_n, window, lo, length
):
    """Histories around three midnights, periods of up to four days from anywhere and
    a day longer on each side: the read that computes the days, the reads that find
    them kept (one statement or split by users), and the reads after a late batch
    (which must replace the days it touched) all equal the brute force."""
    with engine.begin() as conn:
        conn.execute(text("truncate presence_transitions"))
        conn.execute(text("delete from presence_users"))
        conn.execute(text("delete from presence_flapping_days"))
    write_batch(engine, around(rows))
    start = MIDNIGHT + timedelta(seconds=lo)
    end = start + timedelta(seconds=length)
    span = timedelta(seconds=window)

    def agree() -> None:
        # the second period finds the first one's days kept and computes the others
        for lo_, hi_ in ((start, end), (start - timedelta(days=1), end + timedelta(days=1))):
            expected = reference(engine, lo_, hi_, min_n, span)
            for workers in (1, 2, 3):
                got = analytics.flapping_users(engine, lo_, hi_, min_n, span, workers=workers)
                assert found(got) == expected, workers

    agree()
    if end - start >= timedelta(days=2):
        assert kept(engine)  # the whole past days were kept
    write_batch(engine, around(late))
    agree()


def around(rows) -> list:
    return [
        Transition(f"u{u}", s, MIDNIGHT + timedelta(days=d, seconds=t, microseconds=us), T0)
        for u, d, t, us, s in rows
    ]


def found(frame) -> list:
    return [
        (r.user_id, r.transitions, r.max_in_window, r.burst_start.to_pydatetime())
        for r in frame.itertuples()
    ]


def burst(user: str, at: datetime, n: int = 6) -> list:
    return [
        Transition(user, ("online", "away")[i % 2], at + timedelta(seconds=10 * i), at)
        for i in range(n)
    ]


def test_kept_days_are_read_and_a_write_before_their_end_replaces_them(engine):
    """A kept day's users are what narrows the read (emptied by hand, its flapper is
    not reported); a write replaces the days whose end plus a window is after it (so
    a write 9 minutes after a midnight, with 10-minute windows, replaces the day before
    it too) and leaves the earlier ones."""
    write_batch(engine, burst("a", T0) + burst("b", T0 + timedelta(days=1)))
    lo, hi = T0 - timedelta(hours=34), T0 + timedelta(days=2)
    assert analytics.flapping_users(engine, lo, hi)["user_id"].tolist() == ["a", "b"]
    day = [(lo + timedelta(days=k)).date() for k in range(4)]
    assert kept(engine) == {day[0]: [], day[1]: ["a"], day[2]: ["b"], day[3]: []}
    with engine.begin() as conn:
        conn.execute(text("update presence_flapping_days set user_ids = '{}'"))
        conn.execute(
            text("update presence_flapping_days set user_ids = '{ghost}' where day = :d"),
            {"d": day[0]},
        )
    assert analytics.flapping_users(engine, lo, hi).empty  # the kept days answer
    late = MIDNIGHT + timedelta(minutes=9)
    write_batch(engine, [Transition("c", "online", late, late)])
    assert analytics.flapping_users(engine, lo, hi)["user_id"].tolist() == ["a", "b"]
    assert kept(engine) == {day[0]: ["ghost"], day[1]: ["a"], day[2]: ["b"], day[3]: []}


def test_a_day_not_over_is_read_from_the_log_and_kept_only_as_decided(engine):
    """A burst minutes ago: found (from the log), and nothing kept reaches past the
    period's end less KEEP_BEHIND (a whole day's end plus a window, or today's prefix)."""
    from presence_core.analytics import flapping

    now = datetime.now(UTC).replace(microsecond=0)
    write_batch(engine, burst("now", now - timedelta(minutes=5)))
    got = analytics.flapping_users(engine, now - timedelta(days=3), None)
    after = datetime.now(UTC)  # (the period's end is the clock's when it is read)
    assert got["user_id"].tolist() == ["now"]
    with engine.connect() as conn:
        ends = conn.execute(text("select day_end from presence_flapping_days")).scalars().all()
    assert ends and all(e <= after - flapping.KEEP_BEHIND for e in ends)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=ROWS,
    min_n=st.integers(2, 7),
    window=st.integers(1, 900),
)
def test_without_the_table_every_user_is_read(engine, rows, min_n, window):
    """A database before migration 0013 reads all selected users, split or not (as do
    windows over an hour and min_n below 2, on every database)."""
    with engine.begin() as conn:
        conn.execute(text("drop table if exists presence_flapping_days"))
    check(engine, rows, min_n, window, -60, 2400)


def test_a_burst_across_midnight_is_kept_with_the_day_it_starts(engine):
    """Three changes before a midnight and three after: the day before keeps the user
    (its windows run past its end), so a later period finding that day kept still
    reports it; a period ending at that midnight does not see the burst."""
    write_batch(engine, burst("x", MIDNIGHT - timedelta(seconds=30)))
    lo = MIDNIGHT - timedelta(days=2)
    assert analytics.flapping_users(engine, lo, MIDNIGHT).empty
    assert kept(engine)[(MIDNIGHT - timedelta(days=1)).date()] == ["x"]
    got = analytics.flapping_users(engine, lo, MIDNIGHT + timedelta(days=1))
    assert found(got) == [("x", 6, 6, MIDNIGHT - timedelta(seconds=30))]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 3 * 3600),
            st.sampled_from((0, 1, 999_999)),
            st.sampled_from(("online", "away", "offline")),
        ),
        max_size=50,
    ),
    min_n=st.integers(2, 5),
    window=st.integers(1, 900),
    first=st.integers(0, 3 * 3600),
    more=st.integers(0, 3 * 3600),
)
def test_a_day_not_over_grows_from_its_kept_prefix(engine, rows, min_n, window, first, more):
    """Today's users read up to a first end, kept as a prefix, then read again up to a
    later end from that prefix: the users with a window starting that day and
    holding min_n transitions before each end, no fewer (the brute force), the kept
    ones those whose windows end before the prefix's end."""
    from presence_core.analytics import flapping
    from presence_core.analytics.common import bind

    day = MIDNIGHT.date()
    with engine.begin() as conn:
        conn.execute(text("truncate presence_transitions"))
        conn.execute(text("delete from presence_users"))
    write_batch(
        engine,
        [
            Transition(f"u{u}", s, MIDNIGHT + timedelta(seconds=t, microseconds=us), T0)
            for u, t, us, s in rows
        ],
    )
    span = timedelta(seconds=window)

    def truth(hi: datetime) -> set[str]:  # users with min_n in [t, t + span), t that day, < hi
        return {r[0] for r in reference(engine, MIDNIGHT, hi, min_n, span)}

    def read(hi: datetime, prefix: dict) -> tuple[set[str], list]:
        params = bind(
            MIDNIGHT,
            hi,
            include_hidden=True,
            win=span - timedelta(microseconds=1),
            min_n=min_n,
            lead_n=min_n - 1,
        )
        users: set[str] = set()
        with engine.connect() as conn:
            kept = flapping._open_days(conn, params, [day], prefix, span, users)
        return users, kept

    hi1 = MIDNIGHT + timedelta(seconds=first + 1)
    hi2 = hi1 + timedelta(seconds=more)
    users1, kept1 = read(hi1, {})
    assert users1 >= truth(hi1)
    for row in kept1:
        assert row["day_end"] == hi1 - flapping.KEEP_BEHIND
        assert set(row["users"]) >= truth(row["day_end"])
    prefix = {day: (kept1[0]["users"] + ["ghost"], kept1[0]["day_end"])} if kept1 else {}
    users2, _ = read(hi2, prefix)
    assert users2 >= truth(hi2)
    if kept1 and kept1[0]["day_end"] - span > MIDNIGHT:
        assert "ghost" in users2  # the prefix was used


def test_the_prefix_is_read_on_from_a_window_before_its_end(engine):
    """A burst starting within a window before the kept prefix's end is not in the
    prefix (its window was not over); the next read reads on from there and finds it."""
    from presence_core.analytics import flapping
    from presence_core.analytics.common import bind

    hi1 = MIDNIGHT + timedelta(hours=2)
    at = hi1 - flapping.KEEP_BEHIND - timedelta(minutes=5)
    write_batch(engine, burst("x", at))
    span = timedelta(minutes=10)

    def read(hi: datetime, prefix: dict) -> tuple[set[str], list]:
        params = bind(MIDNIGHT, hi, include_hidden=True, win=span, min_n=6, lead_n=5)
        users: set[str] = set()
        with engine.connect() as conn:
            kept = flapping._open_days(conn, params, [MIDNIGHT.date()], prefix, span, users)
        return users, kept

    users, kept = read(hi1, {})
    assert users == {"x"} and kept[0]["users"] == []
    users, _ = read(hi1 + timedelta(hours=1), {MIDNIGHT.date(): ([], kept[0]["day_end"])})
    assert users == {"x"}
