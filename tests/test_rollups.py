"""The summaries kept on write (migration 0005) are, after any sequence of writes,
exactly what a plain-Python recomputation from the stored transitions gives.

Random histories are written through the one write path (``write_batch``) in
random batches: out of order, late, replayed (no-ops), several rows at the same
instant, deletes, and appends after everything stored (the listener's usual
batch, which migration 0007 summarises by its own, cheaper path). After every
step the three summary tables are compared with a brute-force reference
computed from ``presence_transitions`` as it is.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from presence_core.database.storage import Transition, write_batch

T0 = datetime(2026, 3, 7, 22, 0, tzinfo=UTC)
QUARTER = 900 * 1_000_000
STATUSES = ("online", "away", "busy", "offline", "offline")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def expected(rows: list[tuple]) -> tuple[set, dict, dict]:
    """(sessions, status days, tails) from rows (user_id, id, status, occurred_at)."""
    per_user: dict[str, list[tuple]] = defaultdict(list)
    for user, rid, status, at in rows:
        per_user[user].append((at, rid, status))
    sessions: set = set()
    days: dict = defaultdict(lambda: [0] * 96)
    tails: dict = {}
    for user, items in per_user.items():
        items.sort()
        tails[user] = (items[-1][2], items[-1][0])
        effective: dict[datetime, str] = {}
        for at, _rid, status in items:
            effective[at] = status  # the highest id at an instant wins
        points = sorted(effective.items())
        for (start, status), (end, _) in zip(points, points[1:], strict=False):
            if status == "offline":
                continue
            lo, hi = micros(start), micros(end)
            q = lo - lo % QUARTER
            while q < hi:
                part = min(hi, q + QUARTER) - max(lo, q)
                day = (EPOCH + timedelta(microseconds=q)).date()
                days[(user, day, status)][(q % (86400 * 1_000_000)) // QUARTER] += part
                q += QUARTER
        was, opened = False, None
        for at, _rid, status in items:
            present = status != "offline"
            if present and not was:
                opened = at
            elif was and not present:
                if at > opened:
                    sessions.add((user, opened, at))
                opened = None
            was = present
        if opened is not None:
            sessions.add((user, opened, None))
    cum = {}
    for key, quarters in days.items():
        running, values = 0, [0]
        for part in quarters:
            running += part
            values.append(running)
        if running:
            cum[key] = values
    return sessions, cum, tails


def stored(engine) -> tuple[list, set, dict, dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("select user_id, id, status, occurred_at from presence_transitions")
        ).all()
        sessions = set(
            conn.execute(text("select user_id, started_at, ended_at from presence_sessions"))
        )
        days = {
            (u, d, s): list(c)
            for u, d, s, c in conn.execute(
                text("select user_id, day, status, cum from presence_status_days")
            )
        }
        tails = {
            u: (s, at)
            for u, s, at in conn.execute(
                text("select user_id, status, since from presence_status_tails")
            )
        }
    return [tuple(r) for r in rows], sessions, days, tails


def check(engine) -> None:
    rows, sessions, days, tails = stored(engine)
    want_sessions, want_days, want_tails = expected(rows)
    assert sessions == want_sessions
    assert days == want_days
    assert tails == want_tails


event = st.tuples(
    st.integers(0, 2),  # user
    st.integers(0, 40 * 3600),  # seconds after T0 (crosses UTC midnight and DST in NY)
    st.sampled_from([0, 0, 0, 250_000, 999_999]),  # microseconds
    st.sampled_from(STATUSES),
)
# the listener's usual batch: every user's rows after its last stored one (migration
# 0007's append path), sometimes at the same instant as another row of the batch
later = st.tuples(
    st.integers(0, 2),  # user
    st.sampled_from([0, 1, 60, 899, 900, 3600, 4 * 3600]),  # seconds after the previous row
    st.sampled_from([0, 0, 250_000]),  # microseconds
    st.sampled_from(STATUSES),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.lists(event, min_size=1, max_size=12)),
        st.tuples(st.just("append"), st.lists(later, min_size=1, max_size=12)),
        st.tuples(st.just("append"), st.lists(later, min_size=1, max_size=12)),
        st.tuples(st.just("replay"), st.integers(0, 50)),
        st.tuples(st.just("delete"), st.integers(0, 2), st.integers(0, 40 * 3600)),
        st.tuples(st.just("update"), st.integers(0, 2), st.integers(0, 40 * 3600)),
    ),
    min_size=1,
    max_size=8,
)


def transition(e: tuple) -> Transition:
    user, seconds, micro, status = e
    at = T0 + timedelta(seconds=seconds, microseconds=micro)
    return Transition(f"u{user}", status, at, at)


def run(engine, plan) -> None:
    with engine.begin() as conn:
        conn.execute(text("truncate presence_transitions"))
    written: list[list[Transition]] = []
    deleted = False
    clock = T0
    for step in plan:
        if step[0] in ("write", "append"):
            if step[0] == "write":
                batch = [transition(e) for e in step[1]]
            else:
                with engine.connect() as conn:
                    last = conn.execute(
                        text("select max(occurred_at) from presence_transitions")
                    ).scalar()
                clock = max(clock, last or clock) + timedelta(microseconds=1)
                batch = []
                for user, seconds, micro, status in step[1]:
                    clock += timedelta(seconds=seconds, microseconds=micro)
                    batch.append(Transition(f"u{user}", status, clock, clock))
            write_batch(engine, batch)
            written.append(batch)
        elif step[0] == "replay" and written:
            result = write_batch(engine, written[step[1] % len(written)])
            assert deleted or result.inserted == 0

        elif step[0] == "delete":
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "delete from presence_transitions where user_id = :u and occurred_at >= :t"
                    ),
                    {"u": f"u{step[1]}", "t": T0 + timedelta(seconds=step[2])},
                )
            deleted = True
        elif step[0] == "update":  # a DBA's correction: a user's onlines from t become busy
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "update presence_transitions t set status = 'busy'"
                        " where user_id = :u and occurred_at >= :t and status = 'online'"
                        " and not exists (select 1 from presence_transitions b where"
                        " b.user_id = t.user_id and b.occurred_at = t.occurred_at"
                        " and b.status = 'busy')"
                    ),
                    {"u": f"u{step[1]}", "t": T0 + timedelta(seconds=step[2])},
                )
            deleted = True  # a replay may now insert the onlines again
        check(engine)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=steps)
def test_summaries_match_a_recomputation_after_any_writes(engine, plan):
    run(engine, plan)


def test_same_instant_rows_and_zero_length_sessions(engine):
    """Several rows at one instant: the last inserted (highest id) holds the time; a
    session opened and closed at the same instant is not a session of positive length."""
    at = T0 + timedelta(hours=1)
    write_batch(engine, [Transition("u", "online", T0, T0)])
    write_batch(engine, [Transition("u", "offline", at, at)])
    write_batch(engine, [Transition("u", "online", at, at)])  # later id: present again at `at`
    check(engine)
    _, sessions, _, tails = stored(engine)
    assert sessions == {("u", T0, at), ("u", at, None)}
    assert tails["u"] == ("online", at)


def test_late_row_splits_an_open_session(engine):
    write_batch(engine, [Transition("u", "online", T0, T0)])
    later = T0 + timedelta(hours=3)
    write_batch(engine, [Transition("u", "away", later, later)])
    late = T0 + timedelta(hours=2, minutes=7, seconds=30)
    write_batch(engine, [Transition("u", "offline", late, late)])
    check(engine)
    _, sessions, days, _ = stored(engine)
    assert sessions == {("u", T0, late), ("u", later, None)}
    # online from 22:00 UTC for 127.5 minutes: 120 that day, 7.5 the next; none away yet
    assert days[("u", T0.date(), "online")][96] == 2 * 3600 * 1_000_000
    assert days[("u", (T0 + timedelta(days=1)).date(), "online")][96] == 450 * 1_000_000
    assert days[("u", (T0 + timedelta(days=1)).date(), "online")][0:3] == [
        0,
        450 * 1_000_000,
        450 * 1_000_000,
    ]
    assert not any(key[2] == "away" for key in days)


@pytest.mark.parametrize(
    "statement", ["truncate presence_transitions", "delete from presence_transitions"]
)
def test_emptying_the_log_empties_the_summaries(engine, statement):
    write_batch(
        engine,
        [
            Transition("u", "online", T0, T0),
            Transition("u", "offline", T0 + timedelta(hours=2), T0 + timedelta(hours=2)),
        ],
    )
    with engine.begin() as conn:
        conn.execute(text(statement))
    assert stored(engine)[1:] == (set(), {}, {})


def test_dropping_a_month_keeps_its_summaries(engine):
    """Retention drops partitions (no trigger runs): the summaries of the dropped month
    stay, and later writes for the user do not erase them."""
    from presence_core.database import partitions

    jan = datetime(2026, 1, 10, 9, tzinfo=UTC)
    mar = datetime(2026, 3, 10, 9, tzinfo=UTC)
    partitions.ensure_range(engine, jan, mar)
    write_batch(
        engine,
        [
            Transition("u", "online", jan, jan),
            Transition("u", "offline", jan + timedelta(hours=8), jan + timedelta(hours=8)),
            Transition("u", "online", mar, mar),
        ],
    )
    with engine.begin() as conn:
        conn.execute(text("drop table presence_transitions_2026_01"))
    later = mar + timedelta(hours=7)
    write_batch(engine, [Transition("u", "offline", later, later)])
    _, sessions, days, _ = stored(engine)
    assert sessions == {("u", jan, jan + timedelta(hours=8)), ("u", mar, later)}
    assert days[("u", jan.date(), "online")][96] == 8 * 3600 * 1_000_000
    # a late row before March's first one: January's session is still kept
    early = mar - timedelta(hours=1)
    write_batch(engine, [Transition("u", "away", early, early)])
    _, sessions, _, _ = stored(engine)
    assert sessions == {("u", jan, jan + timedelta(hours=8)), ("u", early, later)}
