"""Hand-computed cases for every metric of presence_core.analytics, on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from sqlalchemy import text

from presence_core import analytics
from presence_core.database.storage import Transition, write_batch
from presence_core.errors import PresenceError

NY = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY)


def add(engine, rows, team=None, user_type="agent", inferred=False):
    """rows: (user_id, status, when) tuples written through the storage layer."""
    write_batch(
        engine,
        [
            Transition(
                user_id=u,
                status=s,
                occurred_at=t,
                received_at=t,
                inferred=inferred,
                team=team,
                user_type=user_type,
                user_name=f"name {u}",
            )
            for u, s, t in rows
        ],
    )


def test_sessions_basic_repeated_status_and_status_changes_do_not_split(engine):
    add(
        engine,
        [
            ("a", "online", utc(2026, 5, 4, 9)),
            ("a", "online", utc(2026, 5, 4, 10)),  # repeated status
            ("a", "away", utc(2026, 5, 4, 12)),
            ("a", "online", utc(2026, 5, 4, 12, 30)),
            ("a", "offline", utc(2026, 5, 4, 17)),
            ("a", "online", utc(2026, 5, 4, 18)),
            ("a", "offline", utc(2026, 5, 4, 18, 30)),
        ],
        team="red",
    )
    frame = analytics.sessions(engine, utc(2026, 5, 4), utc(2026, 5, 5))
    assert list(frame.columns) == list(analytics.SESSION_COLUMNS)
    assert frame["started_at"].tolist() == [
        pd.Timestamp(utc(2026, 5, 4, 9)),
        pd.Timestamp(utc(2026, 5, 4, 18)),
    ]
    assert frame["duration_seconds"].tolist() == [8 * 3600, 1800]
    assert frame["open"].tolist() == [False, False]
    assert frame["team"].tolist() == ["red", "red"]
    assert str(frame["started_at"].dt.tz) == "UTC"


def test_session_open_at_period_end_ends_there_and_is_marked_open(engine):
    add(engine, [("b", "online", utc(2026, 5, 4, 15)), ("b", "offline", utc(2026, 5, 4, 20))])
    frame = analytics.sessions(engine, utc(2026, 5, 4), utc(2026, 5, 4, 18))
    assert frame["ended_at"].tolist() == [pd.Timestamp(utc(2026, 5, 4, 18))]
    assert frame["open"].tolist() == [True]
    assert frame["duration_seconds"].tolist() == [3 * 3600]
    # still open today: ends now
    add(engine, [("c", "online", datetime.now(UTC) - timedelta(hours=1))])
    now_frame = analytics.sessions(engine, datetime.now(UTC) - timedelta(days=1), None)
    row = now_frame[now_frame.user_id == "c"].iloc[0]
    assert row["open"]
    assert 3590 < row["duration_seconds"] < 3700


def test_state_at_window_start_counts(engine):
    """Online since the day before, no transition inside the window: online all of it."""
    add(engine, [("d", "online", utc(2026, 5, 3, 8)), ("d", "offline", utc(2026, 5, 6))])
    window = (utc(2026, 5, 4, 10), utc(2026, 5, 4, 11))
    secs = analytics.online_seconds(engine, *window, per_day=False)
    assert secs.to_dict("records") == [{"user_id": "d", "online_seconds": 3600.0}]
    sess = analytics.sessions(engine, *window)
    assert sess["started_at"].tolist() == [pd.Timestamp(utc(2026, 5, 3, 8))]
    assert sess["open"].tolist() == [True]
    conc = analytics.concurrency(engine, *window, bucket="hour")
    assert conc[["peak", "mean"]].to_dict("records") == [{"peak": 1, "mean": 1.0}]
    # offline through the window: nothing
    add(engine, [("e", "online", utc(2026, 5, 1)), ("e", "offline", utc(2026, 5, 2))])
    assert "e" not in set(analytics.online_seconds(engine, *window, per_day=False).user_id)


def test_time_in_status_across_midnight(engine):
    add(
        engine,
        [
            ("a", "online", utc(2026, 5, 4, 22)),
            ("a", "away", utc(2026, 5, 5, 1)),
            ("a", "offline", utc(2026, 5, 5, 2)),
        ],
    )
    frame = analytics.time_in_status(engine, date(2026, 5, 4), date(2026, 5, 5), "UTC")
    got = {(r.date, r.status): r.seconds for r in frame.itertuples()}
    assert got == {
        (date(2026, 5, 4), "online"): 7200,
        (date(2026, 5, 5), "online"): 3600,
        (date(2026, 5, 5), "away"): 3600,
    }
    per_day = analytics.online_seconds(engine, date(2026, 5, 4), date(2026, 5, 5), "UTC")
    assert per_day["online_seconds"].tolist() == [7200, 7200]
    daily = analytics.daily_summary(engine, date(2026, 5, 4), date(2026, 5, 5), "UTC")
    assert list(daily.columns) == list(analytics.DAILY_COLUMNS)
    first, second = daily.to_dict("records")
    assert first["sessions"] == 1 and second["sessions"] == 1
    assert first["first_online"] == pd.Timestamp(utc(2026, 5, 4, 22))
    assert pd.isna(first["last_offline"])
    assert pd.isna(second["first_online"])
    assert second["last_offline"] == pd.Timestamp(utc(2026, 5, 5, 2))
    assert first["online_seconds"] == 7200 and second["online_seconds"] == 7200
    # only `online` is available by default: 2 h of the 24 on each day
    assert first["availability_pct"] == pytest.approx(100 * 7200 / 86400)
    assert second["availability_pct"] == pytest.approx(100 * 3600 / 86400)


@pytest.mark.parametrize(
    ("day", "hours"),
    [(date(2026, 3, 8), 23), (date(2026, 11, 1), 25), (date(2026, 6, 1), 24)],
)
def test_local_days_across_dst_in_new_york(engine, day, hours):
    """Online from 23:00 the evening before to 01:00 the morning after (local)."""
    before = datetime.combine(day - timedelta(days=1), time(23), tzinfo=NY)
    after = datetime.combine(day + timedelta(days=1), time(1), tzinfo=NY)
    add(engine, [("a", "online", before), ("a", "offline", after)])
    frame = analytics.online_seconds(engine, day - timedelta(days=1), day + timedelta(days=1), NY)
    assert frame["date"].tolist() == [day - timedelta(days=1), day, day + timedelta(days=1)]
    assert frame["online_seconds"].tolist() == [3600, hours * 3600, 3600]
    status = analytics.time_in_status(engine, day, day, "America/New_York")
    assert status["seconds"].tolist() == [hours * 3600]
    avail = analytics.availability(engine, day, day, "America/New_York")
    assert avail[["shift_seconds", "availability_pct"]].to_dict("records") == [
        {"shift_seconds": hours * 3600.0, "availability_pct": 100.0}
    ]
    daily = analytics.daily_summary(engine, day, day, NY)
    assert daily["online_seconds"].tolist() == [hours * 3600]
    assert daily["availability_pct"].tolist() == [100.0]
    buckets = analytics.concurrency(engine, day, day, bucket="day", tz=NY)
    assert buckets["bucket"].tolist() == [pd.Timestamp(datetime.combine(day, time(0), tzinfo=NY))]
    hourly = analytics.concurrency(engine, day, day, bucket="hour", tz=NY)
    assert len(hourly) == hours
    assert (hourly["peak"] == 1).all()
    dau = analytics.daily_active_users(engine, day, day, NY)
    assert dau["active_users"].tolist() == [1]


def test_availability_for_a_shift_with_breaks(engine):
    day = date(2026, 5, 5)
    add(
        engine,
        [
            ("a", "online", ny(2026, 5, 5, 8)),
            ("a", "away", ny(2026, 5, 5, 12)),
            ("a", "online", ny(2026, 5, 5, 13)),
            ("a", "offline", ny(2026, 5, 5, 18)),
        ],
        team="support",
    )
    add(
        engine,
        [("b", "online", ny(2026, 5, 4, 8)), ("b", "offline", ny(2026, 5, 4, 9))],
        team="support",
    )
    add(engine, [("x", "online", ny(2026, 5, 5, 8))], team="other")
    frame = analytics.availability(
        engine, day, day, "America/New_York", time(9), time(17), team="support"
    )
    records = frame[["user_id", "available_seconds", "shift_seconds", "availability_pct"]]
    assert records.to_dict("records") == [
        {
            "user_id": "a",
            "available_seconds": 7 * 3600.0,
            "shift_seconds": 8 * 3600.0,
            "availability_pct": 87.5,
        },
        {
            "user_id": "b",
            "available_seconds": 0.0,
            "shift_seconds": 8 * 3600.0,
            "availability_pct": 0.0,
        },
    ]
    both = analytics.availability(
        engine, day, day, NY, time(9), time(17), ("online", "away"), team="support"
    )
    assert both["availability_pct"].tolist() == [100.0, 0.0]


def test_availability_night_shift_crosses_midnight(engine):
    add(engine, [("n", "online", ny(2026, 5, 5, 21)), ("n", "offline", ny(2026, 5, 6, 4))])
    frame = analytics.availability(
        engine, date(2026, 5, 5), date(2026, 5, 6), NY, time(22), time(6)
    )
    assert frame["date"].tolist() == [date(2026, 5, 5), date(2026, 5, 6)]
    assert frame["available_seconds"].tolist() == [6 * 3600, 0]
    assert frame["availability_pct"].tolist() == [75.0, 0.0]


def test_concurrency_peak_and_time_weighted_mean(engine):
    add(
        engine,
        [
            ("a", "online", utc(2026, 5, 4, 10)),
            ("a", "offline", utc(2026, 5, 4, 10, 30)),
            ("b", "online", utc(2026, 5, 4, 10, 15)),
            ("b", "busy", utc(2026, 5, 4, 10, 20)),  # a status change is not a departure
            ("b", "offline", utc(2026, 5, 4, 11, 15)),
            ("c", "online", utc(2026, 5, 4, 10, 30)),  # arrives as a leaves: still 2
            ("c", "offline", utc(2026, 5, 4, 10, 45)),
        ],
    )
    frame = analytics.concurrency(engine, utc(2026, 5, 4, 10), utc(2026, 5, 4, 12), "hour", "UTC")
    assert frame["bucket"].tolist() == [
        pd.Timestamp(utc(2026, 5, 4, 10)),
        pd.Timestamp(utc(2026, 5, 4, 11)),
    ]
    assert frame["peak"].tolist() == [2, 1]
    assert frame["mean"].tolist() == [pytest.approx(1.5), pytest.approx(0.25)]
    fives = analytics.concurrency(engine, utc(2026, 5, 4, 10), utc(2026, 5, 4, 10, 30), "5 minutes")
    assert fives["peak"].tolist() == [1, 1, 1, 2, 2, 2]
    only_online = analytics.concurrency(
        engine, utc(2026, 5, 4, 10), utc(2026, 5, 4, 11), "hour", statuses=["online"]
    )
    # online only: a 10:00-10:30, b 10:15-10:20, c 10:30-10:45
    assert only_online["mean"].tolist() == [pytest.approx((1800 + 300 + 900) / 3600)]
    assert only_online["peak"].tolist() == [2]
    minutes = analytics.concurrency(
        engine, utc(2026, 5, 4, 10, 59), utc(2026, 5, 4, 11, 1), "minute"
    )
    assert minutes["peak"].tolist() == [1, 1]


def test_partial_first_bucket_counts_only_its_part(engine):
    add(engine, [("a", "online", utc(2026, 5, 4, 10)), ("a", "offline", utc(2026, 5, 4, 10, 45))])
    frame = analytics.concurrency(engine, utc(2026, 5, 4, 10, 30), utc(2026, 5, 4, 11), "hour")
    assert frame["bucket"].tolist() == [pd.Timestamp(utc(2026, 5, 4, 10))]
    assert frame["mean"].tolist() == [pytest.approx(0.5)]


def test_inferred_offline_closes_a_session(engine):
    add(engine, [("a", "online", utc(2026, 5, 4, 10))])
    add(engine, [("a", "offline", utc(2026, 5, 4, 11))], inferred=True)
    frame = analytics.sessions(engine, utc(2026, 5, 4), utc(2026, 5, 5))
    assert frame[["duration_seconds", "open"]].to_dict("records") == [
        {"duration_seconds": 3600.0, "open": False}
    ]


def test_current_presence_counts_and_last_seen_table(engine):
    add(engine, [("a", "online", utc(2026, 5, 4, 10))], team="red", user_type="agent")
    add(engine, [("b", "busy", utc(2026, 5, 4, 11))], team="red", user_type="admin")
    add(
        engine,
        [("c", "online", utc(2026, 5, 4, 9)), ("c", "offline", utc(2026, 5, 4, 12))],
        team="blue",
    )
    with engine.begin() as conn:
        conn.execute(text("update presence_users set hide_last_seen = true where user_id = 'c'"))
    now = analytics.current_presence(engine)
    assert now["user_id"].tolist() == ["a", "b"]
    assert now["status_since"].tolist() == [
        pd.Timestamp(utc(2026, 5, 4, 10)),
        pd.Timestamp(utc(2026, 5, 4, 11)),
    ]
    assert analytics.current_presence(engine, team="blue").empty
    by_status = analytics.presence_counts(engine, "status")
    assert dict(zip(by_status.status, by_status.present, strict=True)) == {"online": 1, "busy": 1}
    by_team = analytics.presence_counts(engine, "team")
    assert by_team.to_dict("records") == [{"team": "red", "present": 2}]
    by_type = analytics.presence_counts(engine, "user_type")
    assert set(by_type.user_type) == {"agent", "admin"}
    with pytest.raises(PresenceError):
        analytics.presence_counts(engine, "user_id; drop table x")
    seen = analytics.last_seen_table(engine)
    assert seen["user_id"].tolist() == ["b", "a", "c"]
    hidden = seen[seen.user_id == "c"].iloc[0]
    assert pd.isna(hidden["last_seen"]) and hidden["status"] == "offline"
    revealed = analytics.last_seen_table(engine, include_hidden=True)
    assert revealed["user_id"].tolist() == ["c", "b", "a"]


def test_daily_active_users_first_in_last_out_and_lengths(engine):
    add(
        engine,
        [
            ("a", "online", utc(2026, 5, 4, 8)),
            ("a", "offline", utc(2026, 5, 4, 8, 4)),
            ("b", "online", utc(2026, 5, 4, 9)),
            ("b", "offline", utc(2026, 5, 4, 19)),
            ("a", "online", utc(2026, 5, 4, 20)),
            ("a", "offline", utc(2026, 5, 5, 2)),
        ],
    )
    dau = analytics.daily_active_users(engine, date(2026, 5, 3), date(2026, 5, 6), "UTC")
    assert dau["active_users"].tolist() == [0, 2, 1, 0]
    fio = analytics.first_in_last_out(engine, date(2026, 5, 4), date(2026, 5, 5), "UTC")
    first, second = fio.to_dict("records")
    assert first == {
        "date": date(2026, 5, 4),
        "first_in_user": "a",
        "first_in_at": pd.Timestamp(utc(2026, 5, 4, 8)),
        "last_out_user": "b",
        "last_out_at": pd.Timestamp(utc(2026, 5, 4, 19)),
    }
    assert second["date"] == date(2026, 5, 5)
    assert pd.isna(second["first_in_user"]) and pd.isna(second["first_in_at"])
    assert second["last_out_user"] == "a"
    assert second["last_out_at"] == pd.Timestamp(utc(2026, 5, 5, 2))
    lengths = analytics.session_length_distribution(
        engine, date(2026, 5, 4), date(2026, 5, 5), bins=(0, 300, 3600, 36000)
    )
    assert lengths["sessions"].tolist() == [1, 0, 1, 1]  # 4 min, 6 h, 10 h
    assert lengths["upper_seconds"].tolist()[:3] == [300, 3600, 36000]


def test_session_lengths_leave_out_sessions_of_zero_length(engine):
    """A present status and an offline at the same instant make an empty session: it
    overlaps no period, so neither path counts it (the summaries do not keep it)."""
    at = utc(2026, 5, 4, 8)
    add(
        engine,
        [
            ("a", "online", at),
            ("a", "offline", at),
            ("b", "online", at),
            ("b", "offline", at + timedelta(minutes=2)),
        ],
    )
    for rollup in (True, False):
        lengths = analytics.session_length_distribution(
            engine, date(2026, 5, 4), date(2026, 5, 5), bins=(0, 300), rollup=rollup
        )
        assert lengths["sessions"].tolist() == [1, 0]


def test_flapping_users(engine):
    base = utc(2026, 5, 4, 10)
    flaps = [
        ("f", "online" if i % 2 == 0 else "offline", base + timedelta(seconds=50 * i))
        for i in range(8)
    ]
    calm = [("g", "online", base), ("g", "offline", base + timedelta(hours=1))]
    add(engine, flaps + calm)
    frame = analytics.flapping_users(
        engine, utc(2026, 5, 4), utc(2026, 5, 5), 6, timedelta(minutes=5)
    )
    assert frame["user_id"].tolist() == ["f"]
    assert frame["transitions"].tolist() == [8]
    assert frame["max_in_window"].tolist() == [6]  # 300 s holds 0..250 s: 6 changes
    assert frame["burst_start"].tolist() == [pd.Timestamp(base)]
    assert analytics.flapping_users(
        engine, utc(2026, 5, 4), utc(2026, 5, 5), 7, timedelta(minutes=5)
    ).empty


def test_coverage_gaps(engine):
    with engine.begin() as conn:
        conn.execute(
            text(
                "insert into presence_coverage (listener, started_at, ended_at) values"
                " ('l1', :a, :b), ('l2', :c, :d), ('l1', :e, null)"
            ),
            {
                "a": utc(2026, 5, 4, 9),
                "b": utc(2026, 5, 4, 11),
                "c": utc(2026, 5, 4, 10),
                "d": utc(2026, 5, 4, 12),
                "e": utc(2026, 5, 4, 14),
            },
        )
    frame = analytics.coverage_gaps(engine, utc(2026, 5, 4, 8), utc(2026, 5, 4, 16))
    assert frame[["gap_start", "gap_end"]].to_dict("records") == [
        {
            "gap_start": pd.Timestamp(utc(2026, 5, 4, 8)),
            "gap_end": pd.Timestamp(utc(2026, 5, 4, 9)),
        },
        {
            "gap_start": pd.Timestamp(utc(2026, 5, 4, 12)),
            "gap_end": pd.Timestamp(utc(2026, 5, 4, 14)),
        },
    ]
    assert frame["seconds"].tolist() == [3600, 7200]


def test_weekday_hour_heatmap(engine):
    # Monday 2026-05-04 10:00-11:00 UTC one user, next Monday nobody
    add(engine, [("a", "online", utc(2026, 5, 4, 10)), ("a", "offline", utc(2026, 5, 4, 11))])
    frame = analytics.weekday_hour_heatmap(engine, date(2026, 5, 4), date(2026, 5, 11), "UTC")
    cell = frame[(frame.weekday == 0) & (frame.hour == 10)]["value"].tolist()
    assert cell == [pytest.approx(0.5)]
    assert len(frame) == 7 * 24


def test_filters_and_unknown_zone(engine):
    add(
        engine,
        [("a", "online", utc(2026, 5, 4, 10)), ("a", "offline", utc(2026, 5, 4, 11))],
        team="red",
    )
    add(
        engine,
        [("b", "online", utc(2026, 5, 4, 10)), ("b", "offline", utc(2026, 5, 4, 12))],
        team="blue",
        user_type="admin",
    )
    window = (utc(2026, 5, 4), utc(2026, 5, 5))
    assert analytics.sessions(engine, *window, team="blue")["user_id"].tolist() == ["b"]
    assert analytics.sessions(engine, *window, user_type="agent")["user_id"].tolist() == ["a"]
    assert analytics.sessions(engine, *window, user_ids=["a"])["user_id"].tolist() == ["a"]
    with pytest.raises(PresenceError, match="Mars/Olympus"):
        analytics.online_seconds(engine, *window, tz="Mars/Olympus")
    with pytest.raises(PresenceError):
        analytics.concurrency(engine, *window, bucket="fortnight")
    future = datetime.now(UTC) + timedelta(days=2)
    assert analytics.sessions(engine, future, future + timedelta(days=1)).empty


def test_minute_rollup_agrees_with_the_raw_log_and_follows_late_writes(engine):
    from presence_core.synthetic import history

    end = utc(2026, 3, 12, 6, 30)
    history.generate_history(engine, 30, 8, seed=4, end=end)
    start = utc(2026, 3, 5, 7, 45, 30)  # not on a minute: raw head, rollup middle

    def both(bucket, tz):
        fast = analytics.concurrency(engine, start, end, bucket, tz)
        slow = analytics.concurrency(engine, start, end, bucket, tz, rollup=False)
        pd.testing.assert_frame_equal(fast, slow, check_exact=False, rtol=1e-9)
        return fast

    hourly = both("hour", NY)  # crosses 2026-03-08 in New York
    assert hourly["peak"].max() > 3
    with engine.connect() as conn:
        minutes = conn.execute(text("select count(*) from presence_concurrency_minutes")).scalar()
    assert minutes > 6 * 24 * 60
    both("day", NY)
    both("5 minutes", "Asia/Kolkata")
    # a late row in the middle of the rolled-up range (a replayed event) invalidates
    add(engine, [("late", "online", utc(2026, 3, 6, 3)), ("late", "offline", utc(2026, 3, 9, 3))])
    after = both("hour", NY)
    assert (after["peak"] >= hourly["peak"]).all() and (after["mean"] > hourly["mean"]).sum() > 24
    with engine.begin() as conn:
        conn.execute(text("delete from presence_transitions where user_id = 'late'"))
    pd.testing.assert_frame_equal(both("hour", NY), hourly)
    with engine.begin() as conn:
        conn.execute(text("truncate presence_transitions"))
    assert (both("hour", "UTC")["peak"] == 0).all()
