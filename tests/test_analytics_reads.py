"""The reads the dashboard's pages draw, computed in presence_core.analytics on a real
PostgreSQL: one user's timeline, filtered state tables, who is away or just left,
the Availability page's per-agent table, and the filters' choices."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pandas as pd

from presence_core import analytics
from presence_core.database.storage import Transition, write_batch


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def add(engine, user, rows, team=None, user_type="agent", name=None):
    write_batch(
        engine,
        [
            Transition(
                user_id=user,
                status=s,
                occurred_at=t,
                received_at=t,
                team=team,
                user_type=user_type,
                user_name=name,
            )
            for s, t in rows
        ],
    )


def test_user_timeline_splits_sessions_where_the_status_changed(engine):
    add(
        engine,
        "a",
        [
            ("online", utc(2026, 5, 3, 22)),  # a session running into the period
            ("away", utc(2026, 5, 4, 1)),
            ("offline", utc(2026, 5, 4, 2)),
            ("offline", utc(2026, 5, 4, 3)),  # repeated offline: nothing
            ("online", utc(2026, 5, 4, 9)),
            ("online", utc(2026, 5, 4, 10)),  # repeated status: a row of its own
            ("busy", utc(2026, 5, 4, 11)),
            ("offline", utc(2026, 5, 4, 12)),
            ("online", utc(2026, 5, 4, 23)),  # still open at the period's end
        ],
    )
    add(engine, "b", [("online", utc(2026, 5, 4, 9))])  # someone else: never mixed in
    frame = analytics.user_timeline(engine, "a", utc(2026, 5, 4), utc(2026, 5, 5), "UTC")
    assert list(frame.columns) == list(analytics.TIMELINE_COLUMNS)
    rows = [
        (r.session, r.status, r.start.to_pydatetime(), r.end.to_pydatetime(), r.seconds)
        for r in frame.itertuples(index=False)
    ]
    assert rows == [
        (0, "online", utc(2026, 5, 4), utc(2026, 5, 4, 1), 3600.0),  # cut at the start
        (0, "away", utc(2026, 5, 4, 1), utc(2026, 5, 4, 2), 3600.0),
        (1, "online", utc(2026, 5, 4, 9), utc(2026, 5, 4, 10), 3600.0),
        (1, "online", utc(2026, 5, 4, 10), utc(2026, 5, 4, 11), 3600.0),
        (1, "busy", utc(2026, 5, 4, 11), utc(2026, 5, 4, 12), 3600.0),
        (2, "online", utc(2026, 5, 4, 23), utc(2026, 5, 5), 3600.0),  # ends at the end
    ]
    # the same sessions as analytics.sessions
    found = analytics.sessions(engine, utc(2026, 5, 4), utc(2026, 5, 5), user_ids=["a"])
    assert len(found) == frame["session"].nunique()
    assert (
        len(analytics.user_timeline(engine, "a", date(2026, 5, 4), date(2026, 5, 4), "UTC", 2)) == 2
    )
    assert analytics.user_timeline(engine, "a", utc(2026, 5, 6), utc(2026, 5, 6)).empty
    assert analytics.user_timeline(engine, "nobody", utc(2026, 5, 4), utc(2026, 5, 5)).empty


def test_state_tables_filter_and_find(engine):
    now = datetime.now(UTC)
    add(engine, "a1", [("online", now - timedelta(hours=1))], "red", "agent", "Alice")
    add(engine, "b2", [("away", now - timedelta(minutes=40))], "red", "agent", "Bob")
    add(engine, "c3", [("busy", now - timedelta(minutes=3))], "blue", "manager", "Carol")
    add(
        engine,
        "d4",
        [("online", now - timedelta(hours=2)), ("offline", now - timedelta(minutes=2))],
        "blue",
        "agent",
        "Dave",
    )
    add(
        engine,
        "e5",
        [("online", now - timedelta(hours=2)), ("offline", now - timedelta(hours=1))],
        "blue",
        "agent",
        "Eve",
    )

    def ids(frame: pd.DataFrame) -> list[str]:
        return sorted(frame["user_id"])

    table = analytics.last_seen_table
    assert ids(table(engine, teams=["red"])) == ["a1", "b2"]
    assert ids(table(engine, user_types=["manager"])) == ["c3"]
    assert ids(table(engine, statuses=["offline"])) == ["d4", "e5"]
    assert ids(table(engine, search="CAR")) == ["c3"]  # names, case-insensitive
    assert ids(table(engine, search="4")) == ["d4"]  # ids
    assert ids(table(engine, search="%")) == []  # not a pattern
    assert ids(table(engine, teams=["blue"], user_types=["agent"], search="e")) == ["d4", "e5"]

    away = analytics.away_users(engine, ["online"], timedelta(minutes=15))
    assert away["user_id"].tolist() == ["b2"]  # Carol only for 3 minutes; offline not counted
    with_offline = analytics.away_users(
        engine, ["online"], timedelta(minutes=15), include_offline=True
    )
    assert with_offline["user_id"].tolist() == ["e5", "b2"]  # away longest first
    assert analytics.away_users(engine, ["online"], timedelta(minutes=1), team="blue")[
        "user_id"
    ].tolist() == ["c3"]

    recent = analytics.recently_left(engine, timedelta(minutes=5))
    assert recent["user_id"].tolist() == ["d4"]
    assert analytics.recently_left(engine, timedelta(minutes=5), team="red").empty

    choices = analytics.filter_choices(engine)
    assert choices == {
        "team": ["blue", "red"],
        "user_type": ["agent", "manager"],
        "status": ["away", "busy", "offline", "online"],
        "user_id": ["a1", "b2", "c3", "d4", "e5"],
    }
    assert analytics.user_names(engine)["c3"] == "Carol"


def test_agent_summary_is_the_availability_pages_table(engine):
    day = date(2026, 5, 4)
    add(
        engine,
        "a",
        [
            ("online", utc(2026, 5, 4, 9)),
            ("away", utc(2026, 5, 4, 10)),
            ("online", utc(2026, 5, 4, 10, 30)),
            ("offline", utc(2026, 5, 4, 12)),
        ],
        "red",
        name="Ann",
    )
    add(engine, "b", [("online", utc(2026, 5, 4, 8)), ("offline", utc(2026, 5, 4, 8, 30))], "red")
    add(engine, "c", [("online", utc(2026, 5, 4, 9))], "blue")  # another team
    frame = analytics.agent_summary(
        engine, day, day, "UTC", time(9), time(17), ["online"], team="red"
    )
    assert frame["user_id"].tolist() == ["a", "b"]  # most available first
    a = frame.iloc[0]
    assert a["user_name"] == "Ann" and a["team"] == "red"
    assert a["available_seconds"] == 9000.0  # 9-10 and 10:30-12 inside the shift
    assert a["shift_seconds"] == 8 * 3600.0
    assert a["availability_pct"] == 100.0 * 9000 / (8 * 3600)
    assert a["online_seconds"] == 3 * 3600.0
    assert a["in online"] == 9000.0 and a["in away"] == 1800.0
    assert a["first_in"] == pd.Timestamp(utc(2026, 5, 4, 9))
    assert a["last_out"] == pd.Timestamp(utc(2026, 5, 4, 12))
    assert a["sessions"] == 1
    b = frame.iloc[1]
    assert b["available_seconds"] == 0.0 and b["availability_pct"] == 0.0
    assert b["online_seconds"] == 1800.0 and b["in away"] == 0.0 and b["sessions"] == 1
    assert analytics.agent_summary(engine, day, day, "UTC", team="green").empty


def test_the_old_module_path_still_works():
    from presence_core.analytics import queries

    assert queries.refresh_rollups is analytics.refresh_rollups
    assert set(analytics.__all__) <= set(dir(analytics))


def test_bucket_for_widens_long_periods_and_count_by_counts_a_frame():
    assert analytics.bucket_for(7, "minute", 50_000) == "minute"  # 10,080 minutes
    assert analytics.bucket_for(60, "minute", 50_000) == "5 minutes"  # 86,400 > 50,000
    assert analytics.bucket_for(365, "minute", 50_000) == "hour"
    assert analytics.bucket_for(3_000, "5 minutes", 50_000) == "day"
    assert analytics.bucket_for(100_000, "day", 50_000) == "day"  # nothing longer
    frame = pd.DataFrame({"team": ["a", None, "b", "a", None, None]})
    assert analytics.count_by(frame, "team").to_dict("records") == [
        {"team": None, "present": 3},
        {"team": "a", "present": 2},
        {"team": "b", "present": 1},
    ]
    assert analytics.count_by(frame.iloc[:0], "team").empty
