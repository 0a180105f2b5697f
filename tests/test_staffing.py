"""Staffing and the Live feed on a real PostgreSQL: availability uses the shift windows
of presence_core.shifts (also on DST nights), each team's last complete shift in its
own zone, who is available, away or offline at an instant, the per-team figures
against the target, and the latest changes named as a manager reads them."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from presence_core import analytics
from presence_core.database import tables
from presence_core.database.storage import Transition, write_batch
from presence_core.database.teams import write_teams
from presence_core.shifts import TeamSettings, shift_window


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def add(engine, user, rows, team=None, user_type="agent", name=None):
    write_batch(
        engine,
        [
            Transition(user, s, t, t, team=team, user_type=user_type, user_name=name)
            for s, t in rows
        ],
    )


def hide(engine, user):
    with engine.begin() as conn:
        conn.execute(
            update(tables.users).where(tables.users.c.user_id == user).values(hide_last_seen=True)
        )


# ---------------------------------------------------------------------------
# availability: one definition of the shift window


@pytest.mark.parametrize(
    ("day", "start", "end", "expected_hours"),
    [
        (date(2026, 3, 28), time(22), time(6), 7),  # Berlin springs forward in the night
        (date(2026, 10, 24), time(22), time(6), 9),  # and falls back
        (date(2026, 6, 1), time(22), time(6), 8),
        # a start the clocks skip begins at the change (03:00 CEST), not at 03:30
        (date(2026, 3, 29), time(2, 30), time(10), 7),
        # an end the clocks repeat is its first occurrence (02:30 CEST), not the second
        (date(2026, 10, 24), time(22), time(2, 30), 4.5),
    ],
)
def test_availability_of_a_shift_on_dst_nights_is_the_shift_window(
    engine, day, start, end, expected_hours
):
    window = shift_window(TeamSettings("night", "Europe/Berlin", start, end), day)
    assert window.seconds == expected_hours * 3600
    # online across the whole shift, and beyond on both sides
    add(
        engine,
        "n",
        [
            ("online", window.start - timedelta(hours=3)),
            ("offline", window.end + timedelta(hours=3)),
        ],
        team="night",
    )
    frame = analytics.availability(engine, day, day, "Europe/Berlin", start, end, team="night")
    assert frame["shift_seconds"].tolist() == [window.seconds]
    assert frame["available_seconds"].tolist() == [window.seconds]
    assert frame["availability_pct"].tolist() == [100.0]


def test_shift_windows_are_the_shifts_modules_for_every_day():
    windows = analytics.shift_windows(
        "America/New_York", date(2026, 3, 7), date(2026, 3, 9), time(1, 30), time(2, 30)
    )
    settings = TeamSettings("", "America/New_York", time(1, 30), time(2, 30))
    assert windows == [shift_window(settings, date(2026, 3, d)) for d in (7, 8, 9)]
    # shift_end None: to the next midnight
    evening = analytics.shift_windows("UTC", date(2026, 1, 1), date(2026, 1, 1), time(18), None)
    assert (evening[0].start, evening[0].end) == (utc(2026, 1, 1, 18), utc(2026, 1, 2))


# ---------------------------------------------------------------------------
# the feed


@settings(deadline=None)
@given(
    previous=st.one_of(st.none(), st.sampled_from(["online", "away", "busy", "offline"])),
    status=st.sampled_from(["online", "away", "busy", "offline", "accepting_chats"]),
)
def test_change_kind_against_its_plain_reading(previous, status):
    available = ("online", "accepting_chats")
    kind = analytics.change_kind(previous, status, available)
    present_before = previous not in (None, "offline")
    if status == "offline":
        assert kind == "left"
    elif not present_before:
        assert kind == "came"
    elif (previous in available) != (status in available):
        assert kind == ("went away" if status not in available else "back")
    else:
        assert kind == "changed"


def test_latest_changes_newest_first_with_the_status_replaced(engine):
    now = datetime.now(UTC).replace(microsecond=0)
    add(
        engine,
        "a",
        [
            ("online", now - timedelta(minutes=50)),
            ("away", now - timedelta(minutes=40)),
            ("online", now - timedelta(minutes=30)),
            ("offline", now - timedelta(minutes=20)),
        ],
        team="red",
        name="Ann",
    )
    add(engine, "b", [("online", now - timedelta(minutes=45))], team="blue", name="Ben")
    add(engine, "h", [("online", now - timedelta(minutes=10))], team="red", name="Hal")
    add(engine, "old", [("online", now - timedelta(hours=20))], team="red")
    hide(engine, "h")
    feed = analytics.latest_changes(engine, 10)
    assert list(feed.columns) == list(analytics.FEED_COLUMNS)
    assert [(r.user_id, r.previous, r.status, r.change) for r in feed.itertuples()] == [
        ("a", "online", "offline", "left"),
        ("a", "away", "online", "back"),
        ("a", "online", "away", "went away"),
        ("b", None, "online", "came"),
        ("a", None, "online", "came"),
    ]  # Hal hides his last seen; "old" is older than the 12 h the feed looks back
    with_hal = analytics.latest_changes(engine, 10, include_hidden=True)
    assert with_hal["user_id"].tolist()[0] == "h"
    assert analytics.latest_changes(engine, 10, team="blue")["user_id"].tolist() == ["b"]
    assert len(analytics.latest_changes(engine, 2)) == 2
    assert (
        analytics.latest_changes(engine, 10, within=timedelta(days=1))["user_id"].tolist()[-1]
        == "old"
    )


# ---------------------------------------------------------------------------
# staffing


def test_each_team_opens_on_its_last_complete_shift_at_01_utc(engine):
    now = utc(2026, 12, 6, 1, 0)
    with engine.begin() as conn:
        write_teams(
            conn,
            [
                TeamSettings("berlin-night", "Europe/Berlin", time(22), time(6), 75.0),
                TeamSettings("west", "America/Los_Angeles", time(9), time(17)),
                TeamSettings("tokyo", "Asia/Tokyo", time(9), time(18)),
            ],
        )
    for team in ("berlin-night", "west", "tokyo", "unset"):
        add(engine, f"{team}-1", [("online", utc(2026, 12, 1))], team=team)
    plans = {p.settings.team: p for p in analytics.team_shifts(engine, "UTC", now)}
    assert sorted(plans) == ["berlin-night", "tokyo", "unset", "west"]
    # 02:00 in Berlin: tonight's shift is under way, the last complete one ended yesterday 06:00
    night = plans["berlin-night"]
    assert (night.last.start, night.last.end) == (utc(2026, 12, 4, 21), utc(2026, 12, 5, 5))
    assert night.current is not None and night.current.start == utc(2026, 12, 5, 21)
    # 17:00 in Los Angeles: the shift that ended right now is complete
    assert (plans["west"].last.start, plans["west"].last.end) == (utc(2026, 12, 5, 17), now)
    # 10:00 in Tokyo: today's shift runs, yesterday's is the last complete one
    assert plans["tokyo"].last.day == date(2026, 12, 5) and plans["tokyo"].current is not None
    # no settings: the whole day in the display zone, yesterday's
    unset = plans["unset"]
    assert not unset.configured
    assert (unset.last.start, unset.last.end) == (utc(2026, 12, 5), utc(2026, 12, 6))
    # everyone was online throughout: 100 % over each team's own last shift
    frame = analytics.last_shift_availability(engine, list(plans.values()))
    assert sorted(frame["team"]) == sorted(plans)
    assert frame["availability_pct"].tolist() == [100.0] * 4
    by_team = frame.set_index("team")
    assert by_team.loc["berlin-night", "shift_seconds"] == 8 * 3600


def test_a_monday_to_friday_team_on_a_sunday_is_between_shifts_since_friday(engine):
    """Sunday 2026-12-06: a Mon-Fri team is not on shift (so nobody is "missing"), and
    its last complete shift is Friday's, not Saturday's empty one."""
    now = utc(2026, 12, 6, 12, 0)
    weekdays = frozenset(range(5))
    with engine.begin() as conn:
        write_teams(
            conn,
            [
                TeamSettings("emea", "Europe/London", time(9), time(17), 60.0, weekdays),
                TeamSettings("night", "Europe/Berlin", time(22), time(6), 60.0, weekdays),
                TeamSettings("daily", "Europe/London", time(9), time(17), 60.0),
            ],
        )
    friday = [("online", utc(2026, 12, 4, 8)), ("offline", utc(2026, 12, 5))]
    for team in ("emea", "night", "daily"):
        add(engine, f"{team}-1", friday, team=team)
    plans = {p.settings.team: p for p in analytics.team_shifts(engine, "UTC", now)}
    assert plans["emea"].current is None and plans["emea"].last.day == date(2026, 12, 4)
    assert plans["night"].current is None and plans["night"].last.day == date(2026, 12, 4)
    assert plans["daily"].current is not None and plans["daily"].last.day == date(2026, 12, 5)
    frame = analytics.last_shift_availability(engine, list(plans.values()))
    pct = dict(zip(frame["team"], frame["availability_pct"], strict=True))
    assert pct["emea"] == 100.0 and pct["daily"] == 0.0


def test_roster_and_staffing_against_the_target(engine):
    now = datetime.now(UTC).replace(microsecond=0)
    with engine.begin() as conn:
        write_teams(
            conn,
            [TeamSettings("desk", "UTC", time(0), time(0), 75.0)],  # the whole day
        )
    add(engine, "1", [("online", now - timedelta(hours=2))], team="desk", name="Ann")
    add(
        engine,
        "2",
        [("online", now - timedelta(hours=2)), ("away", now - timedelta(minutes=25))],
        team="desk",
        name="Ben",
    )
    add(
        engine,
        "3",
        [("online", now - timedelta(hours=5)), ("offline", now - timedelta(hours=1))],
        team="desk",
        name="Cat",
    )
    add(engine, "4", [("online", now - timedelta(hours=3))], team="desk", name="Hid")
    add(engine, "9", [("online", now - timedelta(hours=3))], team="other")
    hide(engine, "4")
    frame = analytics.roster(engine, now, teams=["desk"])
    assert list(frame.columns) == list(analytics.ROSTER_COLUMNS)
    rows = {r.user_id: (r.state, r.status, r.since) for r in frame.itertuples()}
    assert rows["1"][:2] == ("available", "online")
    assert rows["2"] == ("away", "away", now - timedelta(minutes=25))
    assert rows["3"] == ("offline", "offline", now - timedelta(hours=1))
    assert rows["4"][:2] == ("available", "online")
    assert rows["4"][2] is None or rows["4"][2] != rows["4"][2]  # hidden: counted, no time
    # an hour and a half ago Ben was still online and Cat too
    earlier = analytics.roster(engine, now - timedelta(minutes=90), teams=["desk"])
    assert earlier.set_index("user_id")["state"].to_dict() == {
        "1": "available",
        "2": "available",
        "3": "available",
        "4": "available",
    }
    plans = analytics.team_shifts(engine, "UTC", now, teams=["desk"])
    table = analytics.staffing(plans, frame)
    row = table.iloc[0]
    assert (row.scheduled, row.available, row.away, row.offline) == (4, 2, 1, 1)
    assert row.available_pct == 50.0 and row.target_pct == 75.0 and bool(row.below_target)
    assert bool(row.on_shift)
    # a team without a target takes the page's default, and is fine above it
    plans = analytics.plan_shifts(["desk"], {}, "UTC", now)
    assert not analytics.staffing(plans, frame, default_target=40.0).iloc[0].below_target
    assert analytics.staffing(plans, frame).iloc[0].target_pct is None


@settings(deadline=None)  # pandas frames: the first example pays for the imports
@given(
    members=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["online", "away", "offline"])),
        max_size=30,
    ),
    on_shift=st.sets(st.sampled_from(["a", "b", "c"])),
    targets=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.floats(1, 100), max_size=3),
    default=st.one_of(st.none(), st.floats(1, 100)),
)
def test_staffing_counts_against_a_plain_count(members, on_shift, targets, default):
    import pandas as pd

    from presence_core.shifts import ShiftWindow

    window = ShiftWindow(date(2026, 1, 1), utc(2026, 1, 1, 9), utc(2026, 1, 1, 17))
    plans = [
        analytics.TeamShift(
            TeamSettings(team, "UTC", time(9), time(17), targets.get(team)),
            True,
            window,
            window if team in on_shift else None,
        )
        for team in ("a", "b", "c")
    ]
    roster = pd.DataFrame(
        {
            "team": [t for t, _ in members],
            "state": [analytics.state_of(s) for _, s in members],
        }
    )
    table = analytics.staffing(plans, roster, default).set_index("team")
    for team in ("a", "b", "c"):
        states = [analytics.state_of(s) for t, s in members if t == team]
        available = states.count("available")
        row = table.loc[team]
        assert (row.scheduled, row.available, row.away, row.offline) == (
            len(states),
            available,
            states.count("away"),
            states.count("offline"),
        )
        target = targets.get(team, default)
        pct = 100 * available / len(states) if states else None
        assert (row.available_pct is None or pd.isna(row.available_pct)) == (pct is None)
        expected = team in on_shift and target is not None and pct is not None and pct < target
        assert bool(row.below_target) == expected


def test_roster_at_any_instant_is_the_last_transition_at_or_before_it(engine):
    """Now it reads the tails kept on write; before a user's last transition, the log
    (the week before the instant, then further back): every branch against the plain
    reading, at instants between, on and around the transitions, weeks apart."""
    import pandas as pd

    now = datetime.now(UTC).replace(microsecond=0)
    history = {
        "1": [("online", now - timedelta(days=40)), ("away", now - timedelta(days=2))],
        "2": [
            ("online", now - timedelta(days=20)),
            ("offline", now - timedelta(days=19)),
            ("busy", now - timedelta(hours=3)),
        ],
        "3": [("online", now - timedelta(days=1))],
    }
    for user, rows in history.items():
        add(engine, user, rows, team="desk")
    with engine.begin() as conn:  # listed, never seen: no transition, no tail
        conn.execute(tables.users.insert().values(user_id="4", team="desk", user_type="agent"))
    history["4"] = []
    instants = sorted(
        {now, now - timedelta(days=60)}
        | {
            t + d
            for rows in history.values()
            for _, t in rows
            for d in (timedelta(0), timedelta(seconds=-1), timedelta(days=8))
        }
    )
    for at in instants:
        frame = analytics.roster(engine, at, teams=["desk"]).set_index("user_id")
        for user, rows in history.items():
            before = [(s, t) for s, t in rows if t <= at]
            status, since = before[-1] if before else ("offline", None)
            assert frame.loc[user, "status"] == status, (user, at)
            got = frame.loc[user, "since"]
            assert (since is None and pd.isna(got)) or got == since, (user, at)
