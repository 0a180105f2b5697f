"""Flapping users: the candidates' pre-filter (a lead() over each user's rows) never
drops a user the RANGE-frame definition keeps; checked against a brute-force count
over random histories with several transitions at one instant, any window and any
threshold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from presence_core import analytics
from presence_core.database.storage import Transition, write_batch

T0 = datetime(2026, 5, 4, 10, tzinfo=UTC)


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


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 4),
            st.integers(0, 1800),
            st.sampled_from((0, 1, 999_999)),  # microseconds: spans ending a microsecond short
            st.sampled_from(("online", "away", "busy", "offline")),
        ),
        max_size=60,
    ),
    min_n=st.integers(-1, 7),
    window=st.integers(1, 900),
    lo=st.integers(-60, 900),
    length=st.integers(1, 2400),
)
def test_flapping_users_match_brute_force(engine, rows, min_n, window, lo, length):
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
    got = analytics.flapping_users(engine, start, end, min_n, span)
    found = [
        (r.user_id, r.transitions, r.max_in_window, r.burst_start.to_pydatetime())
        for r in got.itertuples()
    ]
    assert found == reference(engine, start, end, min_n, span)


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
