"""The concurrency rollup built several chunks at once is the one built chunk by chunk,
and the one a generated history builds from its sessions is the one the SQL builds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from presence_core import analytics
from presence_core.analytics import rollups
from presence_core.analytics.rollups import _chunks, floor_quarter, rollup_valid_until
from presence_core.database.storage import Transition, write_batch
from presence_core.synthetic import history
from tests.test_rollups_reads import database_property

END = datetime(2026, 5, 8, 13, 37, tzinfo=UTC)


def _rollup(engine: Engine) -> tuple[list, list]:
    with engine.connect() as conn:
        minutes = conn.execute(
            text("select minute, peak, user_seconds from presence_concurrency_minutes order by 1")
        ).all()
        quarters = conn.execute(
            text("select quarter, peak, user_seconds from presence_concurrency_quarters order by 1")
        ).all()
    return minutes, quarters


def _forget(engine: Engine) -> None:
    """As if never built: the next refresh starts from the first transition."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "update presence_rollup_state set valid_until = null, dirty_from = null"
                " where name = 'concurrency'"
            )
        )


def test_parallel_build_writes_the_same_rollup_and_validity(engine: Engine) -> None:
    history.generate_history(engine, 30, 6, seed=3, end=END, rollups=False)
    # chunks of 13 hours 7 minutes: spans start off the quarter-hours, as real ones may
    written = analytics.refresh_rollups(
        engine, END, chunk=timedelta(hours=13, minutes=7), workers=3
    )
    parallel = _rollup(engine)
    with engine.connect() as conn:
        valid = rollup_valid_until(conn)
    assert valid == END.replace(second=0)
    _forget(engine)
    assert analytics.refresh_rollups(engine, END) == written
    assert _rollup(engine) == parallel
    assert len(parallel[0]) == written > 5 * 24 * 60  # from the first transition on
    assert [q for q, *_ in parallel[1]] == sorted({floor_quarter(m) for m, *_ in parallel[0]})


def test_a_refresh_after_a_parallel_build_matches_the_log(engine: Engine) -> None:
    history.generate_history(engine, 20, 3, seed=5, end=END, rollups=False)
    analytics.refresh_rollups(engine, END - timedelta(hours=5), chunk=timedelta(hours=6), workers=2)
    analytics.refresh_rollups(engine, END)  # the rest, one chunk
    start = END - timedelta(days=2)
    rolled = analytics.concurrency(engine, start, END, "hour", tz="Asia/Kathmandu")
    raw = analytics.concurrency(engine, start, END, "hour", tz="Asia/Kathmandu", rollup=False)
    assert rolled.equals(raw)


@given(
    start=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 2, 1)),
    minutes=st.integers(1, 20_000),
    chunk=st.integers(1, 3_000),
)
def test_chunks_cover_the_period_and_meet_on_quarter_hours(
    start: datetime, minutes: int, chunk: int
) -> None:
    lo = start.replace(second=0, microsecond=0, tzinfo=UTC)
    hi = lo + timedelta(minutes=minutes)
    spans = _chunks(lo, hi, timedelta(minutes=chunk))
    assert spans[0][0] == lo and spans[-1][1] == hi
    for (a, b), (c, _) in zip(spans, spans[1:], strict=False):
        assert a < b == c
        assert floor_quarter(b) == b
    assert all(a < b for a, b in spans)


def _state(engine: Engine) -> tuple:
    with engine.connect() as conn:
        return _rollup(engine), rollup_valid_until(conn)


def _sql_rollup(engine: Engine, until: datetime) -> tuple:
    """The rollup as the SQL definition builds it from the transitions, from scratch."""
    _forget(engine)
    analytics.refresh_rollups(engine, until)
    return _state(engine)


def _refreshes(monkeypatch) -> list:
    """The generator's calls of refresh_rollups (its fallback), which still run."""
    calls: list = []

    def spy(*args, **kwargs):
        calls.append(args)
        return analytics.refresh_rollups(*args, **kwargs)

    monkeypatch.setattr(history, "refresh_rollups", spy)
    return calls


def test_a_generated_history_builds_the_rollup_from_its_sessions(engine, monkeypatch) -> None:
    """On an empty table the generator writes the minutes from the sessions it wrote,
    without reading the transitions back: the same minutes, quarters and validity as
    the SQL's (END is off the quarter-hours: a partial last quarter)."""
    refreshed = _refreshes(monkeypatch)
    history.generate_history(engine, 40, 6, seed=3, end=END, workers=2)
    assert refreshed == []
    built = _state(engine)
    assert built[1] == END.replace(second=0)
    assert len(built[0][0]) > 5 * 24 * 60 and max(peak for _, peak, _ in built[0][0]) > 5
    assert built == _sql_rollup(engine, END)


def test_a_history_beside_other_rows_is_refreshed_by_the_sql(engine, monkeypatch) -> None:
    """Someone else's row in the table (a listener's): the sessions written are not the
    whole story, so the generator declines its own build and the SQL refreshes."""
    refreshed = _refreshes(monkeypatch)
    at = END - timedelta(days=2)
    write_batch(engine, [Transition("listener-user", "online", at, at)])
    written = history.generate_history(engine, 20, 4, seed=3, end=END)
    assert len(refreshed) == 1
    state = _state(engine)
    assert state == _sql_rollup(engine, END)
    # and directly: the rows counted are not the ones written
    assert rollups.build_from_sessions(engine, [], written, ["1000"], END) is None
    assert _state(engine) == state


_event = st.tuples(
    st.integers(0, 3),  # user
    # seconds after t0 (21:07:30): anywhere, or on a minute (often a quarter-hour) start
    st.one_of(
        st.integers(0, 6 * 3600),
        st.integers(0, 360).map(lambda m: 30 + 60 * m),
        st.integers(0, 24).map(lambda q: 30 + 450 + 900 * q),
    ),
    st.sampled_from([0, 0, 0, 1, 500_000, 999_999]),  # microseconds
    st.sampled_from(["online", "busy", "away", "offline", "offline"]),
)


@settings(database_property, max_examples=25)
@example(  # a session ending on a minute's first instant, another inside that minute
    events=[
        (0, 30, 0, "online"),
        (1, 40, 0, "online"),
        (1, 100, 0, "busy"),
        (0, 90, 0, "offline"),
        (1, 120, 0, "offline"),
    ],
    until=600,
    micro=0,
)
@given(
    events=st.lists(_event, min_size=1, max_size=40),
    until=st.one_of(st.integers(60, 7 * 3600), st.integers(1, 420).map(lambda m: 30 + 60 * m)),
    micro=st.sampled_from([0, 1, 999_999]),
)
def test_minutes_from_sessions_are_the_sql_minutes(engine, events, until, micro) -> None:
    """Any history (several rows at one instant, changes between present statuses,
    zero-length sessions, microseconds, sessions open or closed after ``until``):
    the minutes swept from its sessions, and the quarters summed from them, equal the
    rollup the SQL computes from the transitions."""
    with engine.begin() as conn:
        conn.execute(text("truncate presence_transitions"))
        conn.execute(text("delete from presence_users"))
    t0 = datetime(2026, 3, 7, 21, 7, 30, tzinfo=UTC)
    rows = []
    for user, seconds, micros, status in events:
        at = t0 + timedelta(seconds=seconds, microseconds=micros)
        rows.append(Transition(f"u{user}", status, at, at))
    write_batch(engine, rows)  # the triggers' sessions
    with engine.connect() as conn:
        stored = conn.execute(text("select count(*) from presence_transitions")).scalar()
        sessions = [
            (rollups.epoch_us(a), None if b is None else rollups.epoch_us(b))
            for a, b in conn.execute(text("select started_at, ended_at from presence_sessions"))
        ]
    end = t0 + timedelta(seconds=until, microseconds=micro)
    users = {r.user_id for r in rows}
    assert rollups.build_from_sessions(engine, sessions, stored, users, end) is not None
    assert _state(engine) == _sql_rollup(engine, end)
