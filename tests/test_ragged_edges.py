"""A period's ragged ends (the part of a UTC quarter-hour before its start or after
its end) answered from the quarter-hour arrays where they can be, exactly.

Inside the quarter-hour ``q`` holding a ragged end, a user with no change from ``q``'s
start to its end (the status tail at or after ``q``'s end) is answered from the
arrays: all of ``q`` in one present status, or no present status at all in ``q`` (with
or without an array row that day); only users who changed status inside ``q`` are read
from the log. These histories put one user in each case at both ends of the period,
and the reads must give the raw log's figures to the microsecond.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pandas as pd
import pytest

from presence_core import analytics
from presence_core.analytics import summaries
from presence_core.database.storage import Transition, write_batch

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a quarter-hour, a Monday, in the past
LO = T0 + timedelta(minutes=7, seconds=13, microseconds=250_001)  # inside [10:00, 10:15)
HI = T0 + timedelta(days=1, hours=3, minutes=2, seconds=7, microseconds=500_003)


def at(minutes: float, base: datetime = T0) -> datetime:
    return base + timedelta(minutes=minutes)


# user -> (minutes from T0, status) ; the comments say what the start's quarter-hour
# [10:00, 10:15) holds for the user, then the end's [13:00, 13:15) of the next day
HISTORIES = {
    # online all of both quarters, changes later: the arrays answer (all 900 s)
    "steady": [(-120, "online"), (60, "busy"), (1440 + 120, "away"), (1440 + 240, "offline")],
    # changes after the period's start, inside the quarter: read from the log
    "changer": [
        (-60, "online"),
        (9, "away"),
        (11, "online"),
        (180, "offline"),
        (1440 + 170, "busy"),
        (1440 + 181.5, "online"),
        (1440 + 300, "offline"),
    ],
    # changes inside the quarter before the period's start: read from the log
    "early_change": [(-60, "online"), (3, "away"), (120, "online"), (1440 + 60, "offline")],
    # offline all of both quarters, present the same UTC days (array rows with 0 there)
    "offline_all": [
        (-180, "online"),
        (-60, "offline"),
        (120, "online"),
        (240, "offline"),
        (1440 + 120, "busy"),
        (1440 + 170, "offline"),
    ],
    # no array row for the start's UTC day at all (offline from the day before)
    "no_row": [
        (-3 * 1440, "online"),
        (-2 * 1440, "offline"),
        (1440 + 30, "online"),
        (1440 + 400, "offline"),
    ],
    # steady through the start's quarter, a change in the next one
    "late_change": [(-60, "online"), (17, "away"), (90, "offline")],
    # present from long before the period and never changes: the tail holds
    "tail_holds": [(-300, "away")],
    # arrives inside the start's quarter and never changes: the open segment (the
    # tail) is in no array, so the arrays' 0 must not be taken for offline
    "arrives_inside": [(-600, "online"), (-500, "offline"), (10, "online")],
    # a last change inside the end's quarter, before the period's end
    "leaves_at_end": [(-30, "busy"), (1440 + 181, "offline")],
}


@pytest.fixture
def history(engine):
    rows = [
        Transition(user, status, at(m), at(m), team="T")
        for user, changes in HISTORIES.items()
        for m, status in changes
    ]
    write_batch(engine, rows[1::2])
    write_batch(engine, rows[0::2])  # every other row late: the general path too
    return engine


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False
    )


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kathmandu", "America/New_York"])
def test_time_in_status_and_daily_summary_at_ragged_ends(history, zone):
    got = analytics.time_in_status(history, LO, HI, zone)
    assert_same(got, analytics.time_in_status(history, LO, HI, zone, rollup=False))
    assert set(got["user_id"]) == set(HISTORIES)
    daily = analytics.daily_summary(history, LO, HI, zone)
    assert_same(daily, analytics.daily_summary(history, LO, HI, zone, rollup=False))
    per_user = (
        analytics.time_in_status(history, LO, HI, zone)
        .groupby(["user_id", "status"])["seconds"]
        .sum()
    )
    start = (LO - T0).total_seconds()
    # figures from the definition, by hand: what the ragged start and end contribute
    assert per_user["steady", "online"] == pytest.approx(3600 - start, abs=1e-6)
    assert per_user["changer", "away"] == 120
    assert per_user["arrives_inside", "online"] == pytest.approx(
        (HI - at(10)).total_seconds(), abs=1e-6
    )
    assert per_user["leaves_at_end", "busy"] == pytest.approx(
        (at(1440 + 181) - LO).total_seconds(), abs=1e-6
    )
    assert ("offline_all", "online") in per_user.index  # its later shift, not q
    assert per_user["offline_all", "online"] == 2 * 3600


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kathmandu"])
def test_shift_spans_with_ragged_ends(history, zone):
    """Shifts starting and ending inside quarter-hours: the span read, availability
    and the per-agent table equal the raw log's."""
    for shift in ((time(10, 7, 13), time(13, 2, 7)), (time(9, 59, 59), time(10, 0, 1))):
        got = analytics.availability(history, date(2026, 3, 1), date(2026, 3, 4), zone, *shift)
        want = analytics.availability(
            history, date(2026, 3, 1), date(2026, 3, 4), zone, *shift, rollup=False
        )
        assert_same(got, want)
        assert got["available_seconds"].sum() > 0
        got = analytics.agent_summary(history, date(2026, 3, 1), date(2026, 3, 4), zone, *shift)
        want = analytics.agent_summary(
            history, date(2026, 3, 1), date(2026, 3, 4), zone, *shift, rollup=False
        )
        assert_same(got, want)
    spans = [(date(2026, 1, 1), LO, HI), (date(2026, 1, 2), at(3.5), at(14.25))]
    got = summaries.status_seconds_in_spans(history, spans, ("online", "away", "busy"))
    seconds = {(r.key, r.user_id): r.seconds for r in got.itertuples()}
    assert seconds[date(2026, 1, 2), "steady"] == 10.75 * 60
    assert seconds[date(2026, 1, 2), "changer"] == 10.75 * 60
    assert seconds[date(2026, 1, 2), "tail_holds"] == 10.75 * 60
    assert seconds[date(2026, 1, 2), "arrives_inside"] == 4.25 * 60
    assert seconds[date(2026, 1, 2), "early_change"] == 10.75 * 60
    assert (date(2026, 1, 2), "offline_all") not in seconds
    assert (date(2026, 1, 2), "no_row") not in seconds
    assert seconds[date(2026, 1, 1), "no_row"] == pytest.approx(
        (HI - at(1440 + 30)).total_seconds(), abs=1e-6
    )


def test_a_short_period_across_a_quarter_hour(history):
    """Shorter than a quarter-hour and across one's end: its two ragged parts make one
    window over two quarter-hours, which the arrays of the first cannot answer."""
    lo, hi = at(7.2), at(19.5)
    got = analytics.time_in_status(history, lo, hi, "UTC")
    assert_same(got, analytics.time_in_status(history, lo, hi, "UTC", rollup=False))
    seconds = {(r.user_id, r.status): r.seconds for r in got.itertuples()}
    assert seconds["late_change", "online"] == pytest.approx(9.8 * 60, abs=1e-6)
    assert seconds["late_change", "away"] == pytest.approx(2.5 * 60, abs=1e-6)
