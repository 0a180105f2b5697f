"""The concurrency rollup built several chunks at once is the one built chunk by chunk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from presence_core import analytics
from presence_core.analytics.rollups import _chunks, floor_quarter, rollup_valid_until
from presence_core.synthetic import history

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
