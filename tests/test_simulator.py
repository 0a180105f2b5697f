"""The simulated crowd: a deterministic plan, real clients against our server, a clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from presence_core.server.server import PresenceServer, ServerOptions
from presence_core.synthetic import crowd as simulator
from presence_core.synthetic.crowd import CLOSE, DROP, LOGOUT, OPEN, STATUS, make_users, plan_crowd
from presence_core.synthetic.organisation import TEAMS, organisation
from tests.conftest import free_port
from tests.server_harness import LoopThread, running_server
from tests.waiting import wait_for

TUESDAY = datetime(2026, 3, 3, 8, 30, tzinfo=UTC)  # Europe and Asia at work


def test_users_are_the_same_for_a_seed():
    assert make_users(30, 4) == make_users(30, 4)
    assert make_users(30, 4) != make_users(30, 5)
    users = make_users(200, 1)
    assert {u.user_type for u in users} == {"agent", "admin"}
    assert {u.team for u in users} == {team.name for team in TEAMS}
    assert len({u.user_id for u in users}) == 200 and all(isinstance(u.user_id, int) for u in users)
    for user in users:
        assert user.time_zone == organisation(1).team(user.team).time_zone
        ZoneInfo(user.time_zone)


def test_plan_is_deterministic_and_sane():
    users = make_users(60, 7)
    plan = plan_crowd(users, 7, TUESDAY, 24 * 3600, ramp=60)
    assert plan == plan_crowd(make_users(60, 7), 7, TUESDAY, 24 * 3600, ramp=60)
    assert plan != plan_crowd(users, 8, TUESDAY, 24 * 3600, ramp=60)
    assert plan == sorted(plan)
    kinds = {a.kind for a in plan}
    assert {OPEN, CLOSE, DROP, STATUS, LOGOUT} <= kinds
    assert {a.status for a in plan if a.kind == STATUS} <= {"away", "busy", "online"}
    assert all(0 <= a.at < 24 * 3600 for a in plan)
    by_user = defaultdict(list)
    for action in plan:
        by_user[action.user].append(action)
    for actions in by_user.values():
        assert actions[0].kind == OPEN  # everybody's day begins with a login
    # people already at work at the start log in during the ramp
    early = [a for a in plan if a.at <= 60 and a.kind == OPEN]
    assert len(early) >= 10


def test_logins_follow_each_team_shift_in_its_own_zone():
    start = datetime(2026, 3, 3, 0, 0, tzinfo=UTC)
    users = make_users(120, 2)
    org = organisation(2)
    logged_in: set[int] = set()
    logins = 0
    for action in plan_crowd(users, 2, start, 24 * 3600):
        if action.tab < 0:  # the end of the day
            logged_in.discard(action.user)
        if action.kind != OPEN or action.tab != 0 or action.user in logged_in:
            continue  # other tabs, and reconnects after a lost connection
        logged_in.add(action.user)
        if action.at == 0:
            continue  # a shift already under way at the start
        user = users[action.user]
        local = (start + timedelta(seconds=action.at)).astimezone(ZoneInfo(user.time_zone))
        shift = org.team(user.team).shift_start
        late = (local.hour * 60 + local.minute) - (shift.hour * 60 + shift.minute)
        assert abs((late + 720) % 1440 - 720) <= 90, (user, local)  # night desk included
        logins += 1
    assert logins > 60


def _transitions_per_user(watcher) -> dict:
    per_user = defaultdict(list)
    for user_id, status in watcher.changes():
        per_user[user_id].append(status)
    return dict(per_user)


def _agree_up_to_the_cut(first: dict, second: dict) -> None:
    """Two runs of one plan did the same things in the same order.

    Each run lasts a wall-clock duration, and the action that happens to fall at its
    end (on a loaded machine, a moment earlier or later) is the only thing that may
    differ; then everyone logs out. So, per user and without that final logout, one
    run's statuses are a prefix of the other's, and together they are most of them.
    """
    common = longest = 0
    for user_id in first.keys() | second.keys():
        runs = []
        for seen in (first, second):
            changes = seen.get(user_id, [])
            runs.append(changes[:-1] if changes and changes[-1] == "offline" else changes)
        shorter, longer = sorted(runs, key=len)
        assert longer[: len(shorter)] == shorter, (user_id, first.get(user_id), second.get(user_id))
        common, longest = common + len(shorter), longest + len(longer)
    assert common >= 0.8 * longest > 0, (common, longest)


def test_crowd_drives_our_server_and_is_deterministic():
    seen = []
    for _ in range(2):
        with running_server(grace=5.0) as srv:  # reconnects stay well inside it
            watcher = srv.client()
            lines = []
            stats = srv.loop.run(
                simulator.run_crowd(
                    srv.url,
                    users=30,
                    speed=3600,
                    duration=3,
                    seed=11,
                    start=TUESDAY,
                    heartbeat=0.5,
                    ramp=0.5,
                    progress=lambda s, lines=lines: lines.append(s.line()),
                    progress_every=0.5,
                ),
                timeout=60,
            )
            assert stats.errors_received == 0
            assert stats.connects >= 10 and stats.events_sent > stats.connects
            assert stats.broadcasts_received > 0
            assert stats.present == {}  # the crowd logged out at the end
            assert len(lines) >= 3 and all(line.startswith("sim ") for line in lines)
            wait_for(lambda: srv.snapshot() == {}, what="everyone offline after the run")
            watcher.online_list()
            seen.append(_transitions_per_user(watcher))
            statuses = {s for changes in seen[-1].values() for s in changes}
            assert {"online", "offline", "away"} <= statuses
            assert all(isinstance(uid, int) for uid in seen[-1])
    _agree_up_to_the_cut(*seen)


def test_simulate_command_stops_cleanly_on_ctrl_c():
    with running_server() as srv:
        watcher = srv.client()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "presence_core",
                "simulate",
                "--server",
                srv.url,
                "--users",
                "20",
                "--speed",
                "600",
                "--duration",
                "600",
                "--start",
                TUESDAY.isoformat(),
            ],
            env={**env, "PYTHONPATH": os.getcwd()},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: len(srv.snapshot()) >= 3, timeout=30, what="the crowd at work")
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 0, err
        assert out.startswith("done:") and "Traceback" not in err
        wait_for(lambda: srv.snapshot() == {}, what="the crowd left")
        assert watcher.received("presenceError") == []


def test_unreachable_server_is_one_line_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "presence_core",
            "simulate",
            "--server",
            f"http://127.0.0.1:{free_port()}",
            "--duration",
            "1",
        ],
        env={**env, "PYTHONPATH": os.getcwd()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("presence: error:")]
    assert len(lines) == 1 and "cannot connect" in lines[0] and "Traceback" not in done.stderr


def test_crowd_with_signed_tokens():
    secret = "simulator-secret-0123"
    with running_server(auth_secret=secret) as srv:
        stats = srv.loop.run(
            simulator.run_crowd(
                srv.url, users=12, speed=3600, duration=1.5, seed=2, start=TUESDAY,
                auth_secret=secret, heartbeat=0.3, ramp=0.3,
            ),
            timeout=60,
        )  # fmt: skip
        assert stats.connects >= 3 and stats.connect_failures == 0
        assert stats.errors_received == 0
        wait_for(lambda: srv.snapshot() == {}, what="everyone offline after the run")


def test_crowd_comes_back_after_a_server_restart():
    loop = LoopThread()
    first = PresenceServer(None, ServerOptions(grace=0.3))
    port = loop.run(first.start("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port}"
    crowd = asyncio.run_coroutine_threadsafe(
        simulator.run_crowd(
            url, users=20, speed=60, duration=30, seed=4, start=TUESDAY, ramp=0.3,
            stop=(stop := asyncio.Event()),
        ),
        loop.loop,
    )  # fmt: skip
    second = None
    try:
        wait_for(lambda: len(first.users) >= 5, what="the crowd at work")
        present = len(first.users)
        loop.run(first.stop())  # the server goes away (its users are not told anything)
        second = PresenceServer(None, ServerOptions(grace=0.3))
        loop.run(second.start("127.0.0.1", port))
        wait_for(lambda: len(second.users) >= present, timeout=20, what="the crowd reconnected")
        loop.loop.call_soon_threadsafe(stop.set)
        stats = crowd.result(30)
        assert stats.server_drops >= present and stats.errors_received == 0
        wait_for(lambda: second.users == {}, what="the crowd left")
    finally:
        loop.loop.call_soon_threadsafe(stop.set)
        if second is not None:
            loop.run(second.stop())
        loop.close()
