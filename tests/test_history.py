"""The synthetic history: deterministic, realistic in shape, consistent in presence_users."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from presence_core import analytics
from presence_core.database.teams import team_settings
from presence_core.errors import PresenceError
from presence_core.synthetic import history
from presence_core.synthetic.organisation import organisation

END = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)  # a Monday, mid-shift in Europe


def fingerprint(engine) -> tuple[int, str]:
    with engine.connect() as conn:
        return tuple(
            conn.execute(
                text(
                    "select count(*), md5(string_agg(user_id || status || occurred_at::text, ','"
                    " order by user_id, occurred_at)) from presence_transitions"
                )
            ).one()
        )


def wipe(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("truncate presence_transitions, presence_users, presence_coverage"))


def test_same_seed_same_history_other_seed_other_history(engine):
    calls = []
    written = history.generate_history(
        engine, 40, 10, seed=7, end=END, progress=lambda *a: calls.append(a)
    )
    first = fingerprint(engine)
    assert first[0] == written > 40 * 10
    assert calls[-1] == (40, 40, written)
    wipe(engine)
    history.generate_history(engine, 40, 10, seed=7, end=END)
    assert fingerprint(engine) == first
    wipe(engine)
    history.generate_history(engine, 40, 10, seed=8, end=END)
    assert fingerprint(engine) != first


def test_rerun_on_the_same_database_adds_nothing(engine):
    history.generate_history(engine, 20, 5, seed=3, end=END)
    before = fingerprint(engine)
    assert history.generate_history(engine, 20, 5, seed=3, end=END) == before[0]
    assert fingerprint(engine) == before


def test_shape_of_the_history(engine):
    history.generate_history(engine, 300, 21, seed=1, end=END)
    with engine.connect() as conn:
        stats = conn.execute(
            text(
                """
                select count(distinct team), count(distinct user_type),
                       count(*) filter (where user_type = 'admin')
                from presence_users"""
            )
        ).one()
        statuses = set(
            conn.execute(text("select distinct status from presence_transitions")).scalars()
        )
        repeated = conn.execute(
            text(
                """
                select count(*) from (
                    select status = lag(status) over (partition by user_id order by occurred_at)
                        as same from presence_transitions) s
                where same"""
            )
        ).scalar()
        latest = conn.execute(text("select max(occurred_at) from presence_transitions")).scalar()
        flaps = conn.execute(
            text("select count(*) from presence_transitions where reason = 'disconnect'")
        ).scalar()
    assert stats[0] >= 8 and stats[1] == 2 and 0 < stats[2] < 60
    assert statuses == {"online", "away", "busy", "offline"}
    assert repeated == 0
    assert latest <= END
    assert flaps > 0
    # lunch and short breaks as away, in the middle of the working day
    per_status = analytics.time_in_status(engine, END - timedelta(days=21), END, "UTC")
    totals = per_status.groupby("status")["seconds"].sum()
    assert totals["online"] > totals["busy"] > 0 and totals["away"] > 0
    # weekends are quiet: Sundays have far fewer active users than Mondays
    dau = analytics.daily_active_users(engine, END - timedelta(days=21), END, "Europe/London")
    weekday = {d: n for d, n in zip(dau["date"], dau["active_users"], strict=True)}
    sundays = [n for d, n in weekday.items() if d.weekday() == 6]
    mondays = [n for d, n in weekday.items() if d.weekday() == 0]
    assert max(sundays) < min(mondays) / 3
    # several time zones: the hour people log on differs between teams
    sessions = analytics.sessions(engine, END - timedelta(days=14), END)
    starts = sessions
    tokyo = starts[starts.team == "Support APAC"]["started_at"].dt.hour.median()
    amer = starts[starts.team == "Support Americas"]["started_at"].dt.hour.median()
    assert abs(tokyo - amer) >= 6
    # the night desk starts in the evening, local time, and works across midnight
    zones = dict(history.TEAMS)
    night = sessions[sessions.team == "Night Desk"]
    local_start = [s.started_at.astimezone(ZoneInfo(zones[s.team])) for s in night.itertuples()]
    assert len(local_start) > 20 and sum(t.hour >= 20 for t in local_start) > len(local_start) / 2
    assert sum(s.ended_at.date() > s.started_at.date() for s in night.itertuples()) > 10
    # everyone else starts in the morning of their own zone
    day_teams = sessions[(sessions.team != "Night Desk") & ~sessions.open]
    morning = [
        6 <= s.started_at.astimezone(ZoneInfo(zones[s.team])).hour < 12
        for s in day_teams.itertuples()
    ]
    assert sum(morning) > 0.5 * len(morning)


def test_users_table_ends_consistent(engine):
    history.generate_history(engine, 80, 7, seed=5, end=END)
    with engine.connect() as conn:
        mismatches = conn.execute(
            text(
                """
                select u.user_id from presence_users u
                left join lateral (
                    select status, occurred_at from presence_transitions t
                    where t.user_id = u.user_id order by occurred_at desc limit 1) last on true
                where u.status is distinct from coalesce(last.status, 'offline')
                   or u.status_since is distinct from last.occurred_at
                   or u.last_seen <> case when u.status = 'offline'
                                          then coalesce(last.occurred_at, :end) else :end end
                   or u.team is null or u.user_name is null"""
            ),
            {"end": END},
        ).all()
        present = conn.execute(
            text("select count(*) from presence_users where status <> 'offline'")
        ).scalar()
    assert mismatches == []
    assert present > 0  # a Monday at noon UTC: Europe is at work


def test_bad_sizes_are_refused(engine):
    with pytest.raises(PresenceError):
        history.generate_history(engine, 0, 5)
    with pytest.raises(PresenceError):
        history.generate_history(engine, 5, 0)


def test_the_period_is_covered_and_the_teams_are_known(engine):
    history.generate_history(engine, 30, 4, seed=2, end=END)
    # Health: no gap in the generated period (before it, nobody was watching)
    gaps = analytics.coverage_gaps(engine, END - timedelta(days=4), END)
    assert gaps.empty, gaps
    before = analytics.coverage_gaps(engine, END - timedelta(days=5), END)
    assert before["seconds"].sum() == 24 * 3600
    # presence_teams: every team the users are in, with the organisation's zone and shift
    known = team_settings(engine)
    with engine.connect() as conn:
        used = set(conn.execute(text("select distinct team from presence_users")).scalars())
    org = organisation(2)
    assert set(known) == used
    assert all(known[name] == org.team(name).settings for name in used)
    assert known["Night Desk"].crosses_midnight and known["Night Desk"].time_zone == "Europe/Berlin"
    # a team someone configured is left as it is; a second run adds no coverage twice
    with engine.begin() as conn:
        conn.execute(text("update presence_teams set target_pct = 55 where team = 'Sales'"))
    history.generate_history(engine, 30, 4, seed=2, end=END)
    assert team_settings(engine)["Sales"].target_pct == 55
    with engine.connect() as conn:
        rows = conn.execute(text("select listener, started_at, ended_at from presence_coverage"))
        assert rows.all() == [("history", END - timedelta(days=4), END)]


def test_cli(cli_env):
    done = subprocess.run(
        [sys.executable, "-m", "presence_core", "generate-history", "--users", "5", "--days", "3"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote ") and "for 5 users over 3 days" in done.stdout
    assert "\r" not in done.stderr  # no progress bar when stderr is not a terminal


# --- the summaries of a fresh history, computed by the generator itself -------------------


def summary_tables(engine) -> tuple:
    with engine.connect() as conn:
        return tuple(
            sorted(map(tuple, conn.execute(text(f"select * from {table}"))))
            for table in ("presence_sessions", "presence_status_days", "presence_status_tails")
        )


def test_bulk_summaries_are_the_triggers_own(engine):
    """A fresh history's summaries computed in Python (one transaction with the rows)
    equal those the triggers build from the same rows, and the brute-force
    recomputation of tests/test_rollups.py; later writes go through the triggers as
    usual and keep them exact."""
    from presence_core.database.storage import Transition, write_batch
    from tests.test_rollups import check

    history.generate_history(engine, 60, 9, seed=4, end=END, bulk=False, rollups=False)
    by_triggers = summary_tables(engine)
    assert all(by_triggers)
    wipe(engine)
    history.generate_history(engine, 60, 9, seed=4, end=END, rollups=False)
    assert summary_tables(engine) == by_triggers
    check(engine)
    # the setting lasted only for the generator's transactions
    with engine.connect() as conn:
        assert not conn.execute(text("select current_setting('presence.summaries', true)")).scalar()
    user = by_triggers[2][0][0]
    later = END + timedelta(minutes=5)
    write_batch(engine, [Transition(user, "busy", later, later)])
    check(engine)


def users_table(engine) -> list[tuple]:
    with engine.connect() as conn:
        return list(map(tuple, conn.execute(text("select * from presence_users order by 1"))))


def test_workers_write_the_same_history(engine):
    """Users simulated and written by several processes (each its own connection and
    transactions) give the same transitions, summaries and users as one process; a
    rerun with workers adds nothing."""
    from tests.test_rollups import check

    calls = []
    one = history.generate_history(engine, 60, 9, seed=4, end=END, rollups=False)
    alone = fingerprint(engine), summary_tables(engine), users_table(engine)
    wipe(engine)
    written = history.generate_history(
        engine,
        60,
        9,
        seed=4,
        end=END,
        rollups=False,
        workers=2,
        progress=lambda *a: calls.append(a),
    )
    assert written == one
    assert (fingerprint(engine), summary_tables(engine), users_table(engine)) == alone
    assert len(calls) == 2 and calls[-1] == (60, 60, written)
    check(engine)
    assert history.generate_history(engine, 60, 9, seed=4, end=END, workers=2) == written
    assert fingerprint(engine) == alone[0]


def test_bulk_history_into_a_pruned_month_is_summarised_as_written(engine):
    """Rows for months already pruned are refused by the table; the generator then
    writes through the triggers, which summarise only the rows kept."""
    from presence_core.database import retention
    from tests.test_rollups import check

    june = datetime(2026, 6, 1, tzinfo=UTC)
    history.generate_history(engine, 20, 30, seed=2, end=END)
    assert retention.prune(engine, june.date()).months
    with engine.begin() as conn:  # empties the summaries too (those of pruned months kept)
        conn.execute(text("truncate presence_transitions"))
    assert history.generate_history(engine, 20, 30, seed=2, end=END, rollups=False) > 0
    with engine.connect() as conn:
        first = conn.execute(text("select min(occurred_at) from presence_transitions")).scalar()
        days = conn.execute(text("select min(day) from presence_status_days")).scalar()
    assert first >= june and days >= june.date()
    check(engine)


_instant = st.tuples(
    st.sampled_from(["a", "b"]),
    st.integers(0, 3 * 86_400),  # seconds: across UTC midnights
    st.sampled_from([0, 0, 1, 999_999]),  # microseconds
    st.sampled_from(["online", "away", "busy", "offline"]),
)


@settings(max_examples=200, deadline=None)
@given(events=st.lists(_instant, max_size=30))
def test_bulk_summaries_of_any_rows_match_the_recomputation(events):
    """summarise() against tests/test_rollups.py's brute force on rows the generator
    never makes: several at one instant (the later row, the higher id, wins), repeats,
    zero-length sessions, microseconds."""
    from presence_core.synthetic.summaries import summarise
    from tests.test_rollups import expected

    start = datetime(2026, 3, 7, 20, tzinfo=UTC)
    rows = []
    for user, seconds, micros, status in events:
        at = start + timedelta(seconds=seconds, microseconds=micros)
        rows.append((user, status, at, at, False, None, "history"))
    sessions, days, tails = summarise(rows)
    want_sessions, want_days, want_tails = expected(
        [(r[0], i, r[1], r[2]) for i, r in enumerate(rows)]
    )
    assert set(sessions) == want_sessions
    assert {(u, d, s): [int(x) for x in c.strip("{}").split(",")] for u, d, s, c in days} == (
        want_days
    )
    assert {u: (s, at) for u, s, at in tails} == want_tails


def test_bulk_write_refuses_users_who_have_rows(engine):
    """A user written since the generator looked (a listener) is not summarised as
    fresh: the bulk write declines and writes nothing, so the caller's normal path
    (the triggers) summarises the rows."""
    from presence_core.database.storage import Transition, write_batch
    from presence_core.synthetic.summaries import write_history

    write_batch(engine, [Transition("u1", "online", END, END)])
    at = END + timedelta(hours=1)
    rows = [("u2", "online", at, at, False, None, "history")]
    rows.append(("u1", "offline", at, at, False, None, "history"))
    with engine.begin() as conn:
        assert write_history(conn, rows) is None
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from presence_transitions")).scalar() == 1
