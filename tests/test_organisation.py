"""One synthetic organisation feeds both generators: the crowd is the history's people,
in the same teams and zones, continuing the same day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text

from presence_core.database.teams import team_settings
from presence_core.shifts import shift_window
from presence_core.synthetic import crowd as simulator
from presence_core.synthetic import history
from presence_core.synthetic.crowd import DROP, OPEN, STATUS, make_users, plan_crowd
from presence_core.synthetic.history import transitions_of
from presence_core.synthetic.organisation import TEAMS, Organisation, organisation
from tests.server_harness import running_server
from tests.waiting import wait_for

TUESDAY = datetime(2026, 3, 3, 14, 30, tzinfo=UTC)  # Europe and the Americas at work


def test_people_depend_only_on_seed_and_index():
    org = organisation(3)
    assert Organisation(3).people(40) == org.people(40) == org.people(400)[:40]
    assert Organisation(4).people(40) != org.people(40)
    people = org.people(2000)
    assert len({p.user_name for p in people}) == 2000  # nobody shares a name
    assert len({p.user_id for p in people}) == 2000 and people[0].user_id == 1000
    assert [p.team for p in people[: len(TEAMS)]] == [t.name for t in TEAMS]
    assert all(p.time_zone == org.team(p.team).time_zone for p in people)
    share = sum(p.user_type == "admin" for p in people) / len(people)
    assert 0.04 < share < 0.12
    assert not any(p.saturdays for p in people if p.team == "Night Desk")


def test_working_days_follow_the_team_shift_weekends_and_absences():
    org = organisation(1)
    people = org.people(200)
    days = [date(2026, 5, 4) + timedelta(days=k) for k in range(56)]  # eight weeks from a Monday
    worked = {(p.index, d): org.work_day(p, d) for p in people for d in days}
    assert worked == {(p.index, d): org.work_day(p, d) for p in people for d in days}
    sundays = [w for (_, d), w in worked.items() if d.weekday() == 6]
    assert sundays and all(w is None for w in sundays)
    saturdays = [w for (_, d), w in worked.items() if d.weekday() == 5 and w is not None]
    assert saturdays and all(people[w.person].saturdays for w in saturdays)
    weekdays = [w for (_, d), w in worked.items() if d.weekday() < 5]
    off = sum(w is None for w in weekdays) / len(weekdays)
    assert 0.04 < off < 0.25  # absences of a few days and the odd day off
    # someone away for several days in a row, on working days
    streaks = []
    for person in people:
        run = 0
        for d in days:
            if d.weekday() < 5:
                run = run + 1 if worked[(person.index, d)] is None else 0
                streaks.append(run)
    assert max(streaks) >= 4
    for (_, d), shift in worked.items():
        if shift is None:
            continue
        person = people[shift.person]
        team = org.team(person.team)
        window = shift_window(team.settings, d)
        assert abs(shift.login - window.start.timestamp()) <= 1800 + 6 * 600
        assert shift.login < shift.logout
        times = [at for at, _ in shift.changes]
        assert times == sorted(set(times)) and all(shift.login < t < shift.logout for t in times)
        assert all(shift.login < lost < back < shift.logout for lost, back in shift.drops)
    night = [w for w in worked.values() if w and people[w.person].team == "Night Desk"]
    assert night and all(
        datetime.fromtimestamp(w.logout, UTC).date() > datetime.fromtimestamp(w.login, UTC).date()
        for w in night
    )


def test_a_day_becomes_transitions_that_history_can_store():
    org = organisation(5)
    days = [
        shift
        for p in org.people(100)
        for shift in org.work_days(p, TUESDAY - timedelta(days=14), TUESDAY)
    ]
    assert any(d.drops for d in days) and any(not d.signs_out for d in days)
    for day in days:
        events = transitions_of(day)
        assert events[0][:2] == (day.login, "online") and events[-1][1] == "offline"
        assert all(a[0] < b[0] and a[1] != b[1] for a, b in zip(events, events[1:], strict=False))
        assert events[-1][2] == ("userOffline" if day.signs_out else "disconnect")
        lost = [e for e in events[:-1] if e[1] == "offline"]
        assert len(lost) == len(day.drops) and all(e[2] == "disconnect" for e in lost)
        # between drops, the status is the one the day has chosen
        for at, status, _ in events[1:-1]:
            if status != "offline" and not any(lo <= at <= hi for lo, hi in day.drops):
                assert status == day.status_at(at)


def test_the_crowd_continues_the_day_the_history_ends_on(engine):
    """The history ends at TUESDAY; the crowd starting then logs in exactly those of
    its people that the history leaves present, in the status it leaves them in."""
    people = make_users(60, 1)
    history.generate_history(engine, 200, 3, seed=1, end=TUESDAY)
    with engine.connect() as conn:
        state = {
            row.user_id: row
            for row in conn.execute(
                text(
                    """
                    select u.user_id, u.status, u.team, u.user_name, last.reason
                    from presence_users u
                    left join lateral (
                        select reason from presence_transitions t where t.user_id = u.user_id
                        order by occurred_at desc limit 1) last on true"""
                )
            )
        }
    ramp = 120.0
    plan = plan_crowd(people, 1, TUESDAY, 3600, ramp=ramp)
    early = {a.user: a for a in plan if a.at <= ramp and a.kind == OPEN and a.tab == 0}
    # joining in the middle of a break: the status right after the login
    joined = {(a.user, a.at) for a in early.values()}
    early_status = {a.user: a.status for a in plan if (a.user, a.at - 0.001) in joined}
    present = 0
    for person in people:
        row = state[person.key]
        assert (row.team, row.user_name) == (person.team, person.user_name)
        if row.status != "offline":
            present += 1
            assert person.index in early, person
            assert early_status.get(person.index, "online") == row.status
        elif row.reason != "disconnect":  # off shift (a lost connection comes back)
            assert person.index not in early, person
    assert present >= 15


def test_live_crowd_and_history_are_one_population(engine):
    """History, then the crowd through our server into the same database: every live
    user has a history, and names, teams and zones agree."""
    history.generate_history(engine, 60, 2, seed=1, end=TUESDAY)
    with running_server(engine, grace=2.0) as srv:
        stats = srv.loop.run(
            simulator.run_crowd(
                srv.url, users=30, speed=1800, duration=2, seed=1, start=TUESDAY,
                heartbeat=0.5, ramp=0.3,
            ),
            timeout=60,
        )  # fmt: skip
        assert stats.errors_received == 0 and stats.connects >= 10
        wait_for(lambda: srv.snapshot() == {}, what="the crowd left")
        srv.flush()
    with engine.connect() as conn:
        live = conn.execute(
            text(
                """
                select t.user_id, count(*) filter (where h.user_id is not null) as past
                from (select distinct user_id from presence_transitions
                      where source is distinct from 'history') t
                left join presence_transitions h
                    on h.user_id = t.user_id and h.source = 'history'
                group by t.user_id"""
            )
        ).all()
        users = {
            row.user_id: row
            for row in conn.execute(text("select user_id, user_name, team from presence_users"))
        }
    assert len(live) >= 10
    assert all(past > 0 for _, past in live), live  # every live user has a history
    people = {p.key: p for p in make_users(60, 1)}
    assert len(users) == 60  # the crowd brought nobody new
    zones = {name: s.time_zone for name, s in team_settings(engine).items()}
    for user_id, _ in live:
        person, row = people[user_id], users[user_id]
        assert (row.user_name, row.team) == (person.user_name, person.team)
        assert zones[person.team] == person.time_zone


def test_the_crowd_replays_the_day_with_its_drops():
    people = make_users(200, 9)
    org = organisation(9)
    plan = plan_crowd(people, 9, TUESDAY, 12 * 3600)
    origin = TUESDAY.timestamp()
    checked = 0
    for person in people[:120]:
        for day in org.work_days(person, TUESDAY, TUESDAY + timedelta(hours=12)):
            if day.login < origin:
                continue
            span = [
                a
                for a in plan
                if a.user == person.index and day.login <= origin + a.at <= day.logout
            ]
            horizon = origin + 12 * 3600
            statuses = [(origin + a.at, a.status) for a in span if a.kind == STATUS]
            assert statuses == [(at, s) for at, s in day.changes if at < horizon]
            drops = [origin + a.at for a in span if a.kind == DROP]
            assert drops == [lost for lost, _ in day.drops if lost < horizon]
            checked += 1
    assert checked >= 25
