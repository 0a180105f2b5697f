"""common.read_frame builds its frames from the driver's tuples: they must be the frames
pandas.read_sql built through SQLAlchemy's rows (same values, dtypes, index), for every
column type the readers return, NULLs, all-NULL columns and empty results, and for the
readers themselves on a small history (hidden users, time zones, empty periods)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from datetime import time as dtime

import pandas as pd
import pytest
from sqlalchemy import text

from presence_core import analytics
from presence_core.analytics import common
from presence_core.database.storage import Transition, write_batch


def reference(engine, sql, params, utc=()):
    """read_frame as it was: pandas.read_sql through SQLAlchemy's Row objects."""
    with engine.connect() as conn:
        conn.exec_driver_sql("set local work_mem = '64MB'")
        frame = pd.read_sql(text(sql), conn, params=params)
    for column in utc:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return (
        a.equals(b)
        and list(a.columns) == list(b.columns)
        and list(a.dtypes) == list(b.dtypes)
        and type(a.index) is type(b.index)
        and a.index.equals(b.index)
    )


TYPES = """
select * from (values
    (date '2026-03-08', 'a'::text, 1.5::float8, 3::int, 4::bigint, 2.25::numeric,
     true, timestamptz '2026-03-08 01:00:00+00', array['x', 'y'], null::text,
     interval '90 seconds', timestamptz '2026-03-08 02:00:00+00'),
    (null, null, null, null, null, null, null, null, null, null, null, null),
    (date '2026-11-01', 'ü', -0.0::float8, -1, 9007199254740993, 1e-6, false,
     timestamptz '2026-11-01 05:30:00.000001+00', '{}', null, null, null)
) v(d, s, f, i, b, n, t, ts, arr, nothing, iv, ts2)
where v.i is distinct from :drop"""


@pytest.mark.parametrize("drop", [None, 3, 99], ids=["all", "some", "none"])
def test_read_frame_equals_read_sql_on_every_type(engine, drop):
    """Dates, text (non-ASCII), floats (-0.0), ints, a bigint past 2**53, numerics,
    booleans, timestamps (UTC-converted or not), arrays, intervals, NULLs in every
    column, an all-NULL column; with every row, some, and none."""
    params = {"drop": 99 if drop is None else drop}
    sql = TYPES + (" and false" if drop == 99 else "")
    for utc in ((), ("ts",), ("ts", "ts2")):
        fast = common.read_frame(engine, sql, params, utc)
        assert same(fast, reference(engine, sql, params, utc))


def add(engine, user, rows, team, hidden=False):
    write_batch(
        engine,
        [
            Transition(user_id=user, status=s, occurred_at=t, received_at=t, team=team)
            for s, t in rows
        ],
    )
    if hidden:
        with engine.begin() as conn:
            conn.execute(
                text("update presence_users set hide_last_seen = true where user_id = :u"),
                {"u": user},
            )


def test_readers_give_the_frames_read_sql_gave(engine, monkeypatch):
    """Every reader's frame through read_frame equals its frame through the reference,
    on a history with several users, one hidden, in two zones, with empty periods."""
    day = datetime(2026, 3, 2, tzinfo=UTC)
    for n, user in enumerate(("u1", "u2", "u3", "u4")):
        rows = []
        for d in range(9):
            t = day + timedelta(days=d, hours=8 + n, minutes=7 * n)
            rows += [
                ("online", t),
                ("away", t + timedelta(hours=2, seconds=n)),
                ("busy", t + timedelta(hours=3, microseconds=n)),
                ("offline", t + timedelta(hours=7)),
            ]
        add(engine, user, rows, "red" if n % 2 else "blue", hidden=(user == "u4"))
    start, end = day + timedelta(hours=10), day + timedelta(days=8, hours=13)
    calls = {
        "time_in_status": lambda: analytics.time_in_status(engine, start, end, "America/New_York"),
        "time_in_status_raw": lambda: analytics.time_in_status(
            engine, start, end, "Asia/Kathmandu", statuses=["offline", "away"]
        ),
        "availability": lambda: analytics.availability(
            engine, start.date(), end.date(), "Asia/Kathmandu", dtime(9), dtime(17), team="red"
        ),
        "daily_summary": lambda: analytics.daily_summary(engine, start, end, "UTC"),
        "sessions": lambda: analytics.sessions(engine, start, end, include_hidden=True),
        "agent_summary": lambda: analytics.agent_summary(
            engine, start.date(), end.date(), "UTC", dtime(9), dtime(17)
        ),
        "last_seen": lambda: analytics.last_seen_table(engine),
        "daily_active": lambda: analytics.daily_active_users(engine, start, end),
        "concurrency": lambda: analytics.concurrency(engine, start, end, "hour", "UTC"),
        "first_in_last_out": lambda: analytics.first_in_last_out(engine, start, end, "UTC"),
        "empty_team": lambda: analytics.time_in_status(engine, start, end, "UTC", team="none"),
        "empty_daily": lambda: analytics.daily_summary(engine, start, end, "UTC", team="none"),
        "empty_availability": lambda: analytics.availability(
            engine, start.date(), end.date(), "UTC", team="none"
        ),
    }
    modules = [
        module
        for name, module in sys.modules.items()
        if name.startswith("presence_core.analytics") and hasattr(module, "read_frame")
    ]
    for name, call in calls.items():
        fast = call()
        for module in modules:
            monkeypatch.setattr(module, "read_frame", reference)
        slow = call()
        monkeypatch.undo()
        assert same(fast, slow), name
        assert name.startswith("empty") or not fast.empty, name
