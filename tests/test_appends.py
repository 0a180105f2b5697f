"""The writer's own summaries of appending batches (presence_core.database.appends) are
exactly the triggers' and the brute-force recomputation's, whatever comes before and
after them: late rows, replays, rows at the tail's instant or at one instant, deletes,
and two writers of the same users at once.

Every batch below goes through ``write_batch`` (the listener's and the server's one
write path). Each property example also writes the same rows for a second set of
users with a plain COPY, which the triggers summarise, so the two paths are compared
with each other as well as with ``tests.test_rollups.expected``.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from presence_core.database import appends, storage
from presence_core.database.storage import (
    TRANSITION_COLUMNS,
    TRANSITION_TYPES,
    Transition,
    copy_rows,
    write_batch,
)
from tests.test_rollups import check, stored
from tests.waiting import wait_for

T0 = datetime(2026, 3, 7, 23, 40, tzinfo=UTC)  # 20 minutes before a UTC midnight
STATUSES = ("online", "away", "busy", "offline", "offline")


def row(t: Transition) -> tuple:
    return (t.user_id, t.status, t.occurred_at, t.received_at, t.inferred, t.reason, t.source)


@pytest.fixture(autouse=True)
def every_batch(monkeypatch):
    """The writer's path for batches of any size here (in production it starts at
    MIN_ROWS rows: smaller ones are the triggers', as before; see the last test)."""
    monkeypatch.setattr(appends, "MIN_ROWS", 1)


@pytest.fixture
def taken(monkeypatch):
    """What each write_appends call returned, in order (the real function runs)."""
    outcomes: list = []
    real = appends.write_appends

    def recording(conn, rows):
        outcome = real(conn, rows)
        outcomes.append(outcome)
        return outcome

    monkeypatch.setattr(appends, "write_appends", recording)
    return outcomes


# one step: ("append", rows after everything stored), ("late", rows anywhere),
# ("replay", which earlier batch), ("tie", rows at the user's last instant)
gap = st.sampled_from([0, 0, 1, 59, 899, 900, 901, 3600, 5 * 3600])
later = st.tuples(
    st.integers(0, 2), gap, st.sampled_from([0, 0, 1, 999_999]), st.sampled_from(STATUSES)
)
anywhere = st.tuples(
    st.integers(0, 2),
    st.integers(0, 30 * 3600),
    st.sampled_from([0, 0, 1, 999_999]),
    st.sampled_from(STATUSES),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(later, min_size=1, max_size=10)),
        st.tuples(st.just("append"), st.lists(later, min_size=1, max_size=10)),
        st.tuples(st.just("append"), st.lists(later, min_size=1, max_size=10)),
        st.tuples(st.just("late"), st.lists(anywhere, min_size=1, max_size=6)),
        st.tuples(st.just("replay"), st.integers(0, 20)),
        st.tuples(st.just("tie"), st.integers(0, 2), st.sampled_from(STATUSES)),
        st.tuples(st.just("delete"), st.integers(0, 2), st.integers(0, 30 * 3600)),
    ),
    min_size=1,
    max_size=10,
)


def _twins(items: dict, prefix: str) -> dict:
    """The entries of users starting with ``prefix``, keyed without it."""
    return {
        ((k[0][1:], *k[1:]) if isinstance(k, tuple) else k[1:]): v
        for k, v in items.items()
        if (k[0] if isinstance(k, tuple) else k).startswith(prefix)
    }


def _same_for_both(engine) -> None:
    """Writer users 'w*' and trigger users 't*' have the same summaries, and both
    are the recomputation's."""
    check(engine)
    _, sessions, days, tails = stored(engine)
    w_sessions = {(s[0][1:], *s[1:]) for s in sessions if s[0].startswith("w")}
    t_sessions = {(s[0][1:], *s[1:]) for s in sessions if s[0].startswith("t")}
    assert w_sessions == t_sessions
    assert _twins(days, "w") == _twins(days, "t")
    assert _twins(tails, "w") == _twins(tails, "t")


def _by_triggers(engine, batch: list[Transition]) -> None:
    """The same rows for users 't0'.. in one insert statement the triggers summarise
    (the staging path's statement, which this module's path never takes for them)."""
    twins = [("t" + r[0][1:], *r[1:]) for r in map(row, batch)]
    with engine.begin() as conn:
        conn.execute(text(storage._STAGE_TABLE))
        copy_rows(conn, "presence_stage", TRANSITION_COLUMNS, twins, TRANSITION_TYPES)
        conn.execute(text(storage._INSERT_NEW))


def run(engine, plan) -> list[list[Transition]]:
    """Write the plan (each batch twice: by write_batch, by the triggers), checking
    after every step; returns the batches."""
    with engine.begin() as conn:
        conn.execute(text("truncate presence_transitions"))
    written: list[list[Transition]] = []
    clock = T0
    for step in plan:
        batch: list[Transition] = []
        if step[0] == "append":
            for user, seconds, micro, status in step[1]:
                clock += timedelta(seconds=seconds, microseconds=micro)
                batch.append(Transition(f"w{user}", status, clock, clock))
        elif step[0] == "late":
            for user, seconds, micro, status in step[1]:
                at = T0 + timedelta(seconds=seconds, microseconds=micro)
                batch.append(Transition(f"w{user}", status, at, at))
                clock = max(clock, at)
        elif step[0] == "replay" and written:
            batch = written[step[1] % len(written)]
        elif step[0] == "tie":
            with engine.connect() as conn:
                last = conn.execute(
                    text("select since from presence_status_tails where user_id = :u"),
                    {"u": f"w{step[1]}"},
                ).scalar()
            if last is not None:
                batch = [Transition(f"w{step[1]}", step[2], last, last)]
        elif step[0] == "delete":
            at = T0 + timedelta(seconds=step[2])
            with engine.begin() as conn:
                for user in (f"w{step[1]}", f"t{step[1]}"):
                    conn.execute(
                        text(
                            "delete from presence_transitions"
                            " where user_id = :u and occurred_at >= :t"
                        ),
                        {"u": user, "t": at},
                    )
        if batch:
            write_batch(engine, batch)
            _by_triggers(engine, batch)
            written.append(batch)
        _same_for_both(engine)
    return written


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=steps)
def test_the_writers_summaries_are_the_triggers_and_the_recomputations(engine, taken, plan):
    taken.clear()
    written = run(engine, plan)
    # the usual batch (new users, or every user after its tail) is the writer's own
    first = written[0] if written else []
    if plan[0][0] == "append" and len({(t.user_id, t.occurred_at, t.status) for t in first}) == len(
        first
    ):
        assert isinstance(taken[0], int)


def test_which_batches_the_writer_summarises(engine):
    """New users and rows after each user's tail: the writer's. A row at or before
    a tail, or one already stored: nothing written, the caller's normal path."""
    first = [Transition("a", "online", T0, T0), Transition("b", "away", T0, T0)]
    with engine.begin() as conn:
        assert appends.write_appends(conn, [row(t) for t in first]) == 2
    at = T0 + timedelta(minutes=1)
    cases = {
        "after": ([Transition("a", "offline", at, at)], 1),
        "tie": ([Transition("a", "away", T0, T0)], None),
        "late": ([Transition("b", "busy", T0 - timedelta(seconds=1), T0)], None),
        "mixed": ([Transition("c", "online", at, at), Transition("b", "busy", T0, T0)], None),
        "stored": ([Transition("b", "away", T0, T0)], None),  # not after b's tail
        "twice": ([Transition("c", "online", at, at)] * 2, appends.DUPLICATES),
        "also stored": (
            [Transition("c", "online", at, at), Transition("a", "online", T0, T0)],
            None,
        ),
    }
    for name, (batch, outcome) in cases.items():
        with engine.begin() as conn:
            assert appends.write_appends(conn, [row(t) for t in batch]) == outcome, name
            conn.rollback()
    check(engine)
    # the setting is never left on: a later statement of the transaction is summarised
    with engine.begin() as conn:
        assert appends.write_appends(conn, [row(Transition("a", "offline", at, at))]) == 1
        conn.execute(
            text(
                "insert into presence_transitions (user_id, status, occurred_at, received_at)"
                " values ('b', 'offline', :at, :at)"
            ),
            {"at": at},
        )
    check(engine)


def test_the_rollups_and_day_caches_are_still_marked(engine):
    """The writer's summaries skip the summaries' trigger, not the invalidation one."""
    write_batch(engine, [Transition("a", "online", T0, T0)])
    with engine.begin() as conn:
        conn.execute(text("update presence_rollup_state set dirty_from = null"))
    at = T0 + timedelta(hours=2)
    write_batch(engine, [Transition("a", "offline", at, at), Transition("n", "online", at, at)])
    with engine.connect() as conn:
        marks = dict(conn.execute(text("select name, dirty_from from presence_rollup_state")).all())
    assert marks["concurrency"] == at and marks["daily_active"] == at


def test_a_listeners_stream_is_summarised_by_the_writer(engine, taken):
    """Batches like the listener's (many users, several rows each, across a UTC
    midnight, every row a change): each is the writer's, and the result is exact."""
    clock = T0
    for batch_no in range(6):
        batch = []
        for i in range(40):
            clock += timedelta(seconds=37, microseconds=i)
            status = STATUSES[(i + batch_no) % len(STATUSES)]
            batch.append(Transition(f"u{i % 9}", status, clock, clock))
        write_batch(engine, batch)
    assert all(isinstance(outcome, int) for outcome in taken) and len(taken) == 6
    check(engine)


def test_two_writers_of_the_same_users_at_once(engine):
    """A server and a listener write the same users at the same time, often the same
    events: whichever commits second sees the first's rows (the per-user locks), the
    duplicates are skipped, and the summaries are exact at the end."""
    rounds = 30
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(name: str, offset: int) -> None:
        try:
            for n in range(rounds):
                at = T0 + timedelta(seconds=10 * n)
                # even rounds: both log the same events; odd ones: each its own, a
                # microsecond apart, so both batches append after the same stored tail
                shift = timedelta(microseconds=offset if n % 2 else 0)
                batch = [
                    Transition(f"u{u}", STATUSES[(n + u + offset) % len(STATUSES)], at + shift, at)
                    for u in range(6)
                ]
                start.wait(timeout=30)
                write_batch(engine, batch)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=writer, args=a) for a in (("server", 0), ("listener", 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    check(engine)
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from presence_transitions")).scalar() > rounds


def _copy_waiting(engine) -> int:
    """How many COPYs wait for a lock (read afresh: a transaction keeps its first
    view of pg_stat_activity)."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "select count(*) from pg_stat_activity"
                " where wait_event_type = 'Lock' and query like 'copy%'"
            )
        ).scalar()


@pytest.mark.parametrize("order", ["after", "before"])
def test_a_writer_committing_while_the_summaries_are_computed(engine, order):
    """The tails read before the COPY are stale when another writer of the same user
    commits before the locks are taken: read again under them, the batch is
    summarised from the new tail (its rows come after) or left to the triggers (they
    come before it). The other writer holds the rollups' state row, so this
    writer's COPY waits for it after reading the tails: the order is certain."""
    write_batch(engine, [Transition("u", "online", T0, T0)])
    theirs = T0 + timedelta(minutes=10)
    ours = theirs + (timedelta(minutes=5) if order == "after" else -timedelta(minutes=5))
    outcome: list = []
    with engine.connect() as other:
        other.begin()
        write_batch(other, [Transition("u", "offline", theirs, theirs)])

        def ours_now() -> None:
            with engine.begin() as conn:
                outcome.append(
                    appends.write_appends(conn, [row(Transition("u", "away", ours, ours))])
                )

        thread = threading.Thread(target=ours_now)
        thread.start()
        wait_for(lambda: _copy_waiting(engine), what="our COPY waiting for the other writer")
        other.commit()
        thread.join(timeout=30)
    assert outcome == ([1] if order == "after" else [None])
    if order == "before":
        write_batch(engine, [Transition("u", "away", ours, ours)])  # the caller's way
    check(engine)


def test_small_batches_are_left_to_the_triggers(engine, monkeypatch):
    """Below MIN_ROWS rows the triggers summarise (cheaper there); from it, the writer."""
    monkeypatch.setattr(appends, "MIN_ROWS", 1000)
    at = [T0 + timedelta(milliseconds=i) for i in range(1000)]
    small = [row(Transition(f"u{i % 7}", STATUSES[i % 5], at[i], at[i])) for i in range(999)]
    with engine.begin() as conn:
        assert appends.write_appends(conn, small) is None
    later = [T0 + timedelta(seconds=5, milliseconds=i) for i in range(1000)]
    big = [row(Transition(f"u{i % 7}", STATUSES[i % 5], t, t)) for i, t in enumerate(later)]
    with engine.begin() as conn:
        assert appends.write_appends(conn, big) == 1000
    check(engine)
