"""The storage layer: idempotent batched writes and current state, on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from psycopg.errors import DataError
from sqlalchemy import text

from presence_core.database.storage import (
    Sighting,
    Transition,
    current_state,
    present_users,
    user_id_text,
    write_batch,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def tr(user: str, status: str, minutes: float, **kw) -> Transition:
    at = T0 + timedelta(minutes=minutes)
    return Transition(user, status, at, at + timedelta(milliseconds=50), **kw)


def rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "select user_id, status, occurred_at, inferred, reason from presence_transitions"
                " order by occurred_at, user_id"
            )
        ).all()


def test_batch_is_written_with_users(engine):
    result = write_batch(
        engine,
        [
            tr("1", "online", 0, user_type="agent", user_name="Ann", team="blue"),
            tr("2", "online", 1),
            tr("1", "away", 5),
        ],
    )
    assert result.inserted == 3 and result.duplicates == 0
    assert [(r.user_id, r.status) for r in rows(engine)] == [
        ("1", "online"),
        ("2", "online"),
        ("1", "away"),
    ]
    state = current_state(engine)
    assert state["1"].status == "away"
    assert state["1"].status_since == T0 + timedelta(minutes=5)
    assert state["1"].last_seen == T0 + timedelta(minutes=5)
    assert (state["1"].user_name, state["1"].user_type, state["1"].team) == ("Ann", "agent", "blue")
    assert state["2"].status == "online" and state["2"].user_name is None


def test_replay_inserts_nothing_twice(engine):
    batch = [tr("1", "online", 0), tr("1", "offline", 30, reason="userOffline")]
    assert write_batch(engine, batch).inserted == 2
    again = write_batch(engine, batch)
    assert again.inserted == 0 and again.duplicates == 2
    # duplicates inside one batch collapse too
    assert write_batch(engine, [tr("3", "online", 1), tr("3", "online", 1)]).inserted == 1
    assert len(rows(engine)) == 3


def test_replayed_old_events_do_not_roll_state_back(engine):
    write_batch(engine, [tr("1", "online", 0), tr("1", "offline", 60)])
    write_batch(engine, [tr("1", "online", 0)])  # an old event, replayed from a spool
    state = current_state(engine)["1"]
    assert state.status == "offline"
    assert state.status_since == T0 + timedelta(minutes=60)
    assert state.last_seen == T0 + timedelta(minutes=60)


def test_sightings_advance_last_seen_only(engine):
    write_batch(engine, [tr("1", "online", 0)])
    write_batch(engine, sightings=[Sighting("1", T0 + timedelta(minutes=3), user_name="Ann")])
    write_batch(engine, sightings=[Sighting("1", T0 + timedelta(minutes=2))])  # older: ignored
    state = current_state(engine)["1"]
    assert state.status == "online"
    assert state.status_since == T0
    assert state.last_seen == T0 + timedelta(minutes=3)
    assert state.user_name == "Ann"
    assert len(rows(engine)) == 1


def test_names_fill_in_but_are_never_erased(engine):
    write_batch(engine, [tr("1", "online", 0, user_name="Ann", team="blue")])
    write_batch(engine, [tr("1", "offline", 1)])
    state = current_state(engine)["1"]
    assert (state.user_name, state.team) == ("Ann", "blue")


def test_transitions_and_sightings_share_one_transaction(engine):
    # a bad sighting fails the batch: the transitions before it must not stay behind
    with pytest.raises(DataError):
        write_batch(
            engine,
            [tr("1", "online", 0)],
            [Sighting("2", "not a time")],  # type: ignore[arg-type]
        )
    assert rows(engine) == []
    assert current_state(engine) == {}


@pytest.mark.parametrize(
    "bad",
    [
        Transition("2", "online", datetime(2026, 3, 2, 9, 1), T0),  # naive: refused, not guessed
        Transition("2", "online", T0, "2026-03-02 09:01Z"),  # type: ignore[arg-type]
        Transition(2, "online", T0, T0),  # type: ignore[arg-type]
    ],
)
def test_a_value_of_the_wrong_type_is_a_data_error(engine, bad):
    # binary COPY checks types in the client; it must fail like the database would
    with pytest.raises(DataError, match="presence_transitions"):
        write_batch(engine, [tr("1", "online", 0), bad])
    assert rows(engine) == []
    assert current_state(engine) == {}


def test_flags_are_stored(engine):
    write_batch(engine, [tr("9", "offline", 2, inferred=True, reason="reconcile", source="l1")])
    with engine.connect() as conn:
        row = conn.execute(text("select inferred, reason, source from presence_transitions")).one()
    assert tuple(row) == (True, "reconcile", "l1")


def test_present_users_and_filtered_state(engine):
    write_batch(engine, [tr("1", "online", 0), tr("2", "busy", 0), tr("3", "offline", 0)])
    assert set(present_users(engine)) == {"1", "2"}
    assert set(current_state(engine, ["2", "3", "nobody"])) == {"2", "3"}


def test_large_batch(engine):
    batch = [tr(str(i % 500), "online" if i < 500 else "away", i / 100) for i in range(5000)]
    assert write_batch(engine, batch).inserted == 5000
    assert len(current_state(engine)) == 500


@pytest.mark.parametrize(
    ("value", "expected"), [(123, "123"), ("abc", "abc"), (0, "0"), ("u-1", "u-1")]
)
def test_user_id_text(value, expected):
    assert user_id_text(value) == expected


@pytest.mark.parametrize("value", [None, True, 1.5, [], {}, "", "   ", "x" * 257])
def test_user_id_text_rejects(value):
    with pytest.raises(ValueError):
        user_id_text(value)


def test_a_batch_mixing_old_and_new_rows_inserts_only_the_new(engine):
    write_batch(engine, [tr("1", "online", 0), tr("1", "offline", 10)])
    # the fast path (COPY straight into the table) meets the old row and must
    # fall back without leaving any of the batch behind twice
    result = write_batch(engine, [tr("2", "online", 1), tr("1", "offline", 10), tr("2", "away", 2)])
    assert (result.inserted, result.duplicates) == (2, 1)
    assert [(r.user_id, r.status) for r in rows(engine)] == [
        ("1", "online"),
        ("2", "online"),
        ("2", "away"),
        ("1", "offline"),
    ]
    assert current_state(engine)["2"].status == "away"


def test_a_user_first_seen_by_a_sighting_is_offline_until_a_transition(engine):
    write_batch(engine, sightings=[Sighting("5", T0, user_name="Eve", team="red")])
    state = current_state(engine)["5"]
    assert (state.status, state.status_since, state.last_seen) == ("offline", None, T0)
    assert (state.user_name, state.team) == ("Eve", "red")
    write_batch(engine, [tr("5", "online", 1)], [Sighting("5", T0 + timedelta(minutes=3))])
    state = current_state(engine)["5"]
    assert state.status == "online" and state.status_since == T0 + timedelta(minutes=1)
    assert state.last_seen == T0 + timedelta(minutes=3)


def test_names_come_from_the_latest_row_that_has_them(engine):
    write_batch(
        engine,
        [
            tr("1", "online", 0, user_name="Old name"),
            tr("1", "away", 5, user_name="New name"),
            tr("1", "online", 9),  # no name: keeps the newest one seen
        ],
    )
    assert current_state(engine)["1"].user_name == "New name"


def test_two_batches_in_one_transaction(engine):
    with engine.begin() as conn:
        write_batch(conn, [tr("1", "online", 0), tr("2", "online", 0)])
        write_batch(conn, [tr("1", "online", 0), tr("1", "away", 1)])  # one replayed row
    assert [(r.user_id, r.status) for r in rows(engine)] == [
        ("1", "online"),
        ("2", "online"),
        ("1", "away"),
    ]
    assert current_state(engine)["1"].status == "away"
