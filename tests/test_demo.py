"""`presence demo --no-browser` from an empty PRESENCE_HOME, end to end, then Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg
import pytest
import socketio
from playwright.sync_api import expect
from sqlalchemy import text
from sqlalchemy.engine import make_url

from presence_core import analytics
from presence_core.commands.demo import CROWD_SPEED, SEED
from presence_core.database import engine as db
from presence_core.database.embedded import EmbeddedPostgres
from presence_core.synthetic.crowd import make_users, plan_crowd
from tests.conftest import free_port
from tests.test_browser import LIVE_WAIT_MS, browser, new_page, open_page  # noqa: F401
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _live_transitions(conninfo: str, user_id: str | None = None) -> int:
    try:
        with psycopg.connect(conninfo, connect_timeout=3) as conn:
            return conn.execute(
                "select count(*) from presence_transitions where source is distinct from"
                " 'history' and received_at > now() - interval '1 minute'"
                " and (%(user)s::text is null or user_id = %(user)s::text)",
                {"user": user_id},
            ).fetchone()[0]
    except psycopg.Error:
        return 0


def _crowd_works_within(users: int, seconds: float) -> bool:
    """Whether the demo's crowd has anything to do in the next ``seconds`` of wall
    clock: its plan is the organisation's real day, so at night or on a Sunday all
    of a small crowd may be off (the plan is pure; tests/test_simulator.py covers it)."""
    people = make_users(users, SEED)
    return bool(plan_crowd(people, SEED, datetime.now(UTC), seconds * CROWD_SPEED))


def _log_in_and_out(url: str, user_id: int, conninfo: str, page) -> None:
    """One of the organisation's people, by hand with the guide's protocol, through
    the demo's server: the listener stores the arrival and the departure, and the
    Live page open in Chromium shows both in its feed beside its chart."""
    feed = page.locator(".pd-feed .pd-user")
    with socketio.SimpleClient() as client:
        client.connect(url, transports=["websocket"], wait_timeout=10)
        client.emit("userOnline", {"userId": user_id})
        wait_for(
            lambda: _live_transitions(conninfo, str(user_id)) >= 1, 30, what="the arrival stored"
        )
        came = feed.filter(has=page.locator(f"[title^='{user_id}:']")).first
        expect(came).to_have_attribute("data-change", "came", timeout=LIVE_WAIT_MS)
        client.emit("userOffline", {"userId": user_id})
        wait_for(
            lambda: _live_transitions(conninfo, str(user_id)) >= 2, 30, what="the departure stored"
        )
        left = feed.filter(has=page.locator(f"[title^='{user_id}:']")).first
        expect(left).to_have_attribute("data-change", "left", timeout=LIVE_WAIT_MS)
    expect(page.locator("[data-testid='stVegaLiteChart']")).to_have_count(1)
    expect(page.locator("[data-testid='stException']")).to_have_count(0)


def test_demo_runs_and_stops_cleanly(tmp_path: Path, browser):  # noqa: F811 - a fixture
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    db_port, dash_port, server_port = free_port(), free_port(), free_port()
    env |= {"PRESENCE_HOME": str(home), "PRESENCE_DB_PORT": str(db_port)}
    demo = subprocess.Popen(
        [sys.executable, "-m", "presence_core", "demo", "--no-browser"]
        + ["--port", str(dash_port), "--server-port", str(server_port)]
        + ["--history-users", "30", "--history-days", "3", "--users", "12"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives it
    )
    processes: list[psutil.Process] = []
    try:
        wait_for(
            lambda: _healthy(f"http://127.0.0.1:{dash_port}/_stcore/health"),
            timeout=120,
            what="the dashboard's health endpoint",
        )
        conninfo = wait_for(
            lambda: EmbeddedPostgres(home).running(), timeout=60, what="the embedded database"
        ).conninfo()
        crowd_works = _crowd_works_within(12, 50)
        person = make_users(12, SEED)[0].user_id
        page = new_page(browser)
        open_page(page, f"http://127.0.0.1:{dash_port}", "")
        _log_in_and_out(f"http://127.0.0.1:{server_port}", person, conninfo, page)
        page.context.close()
        if crowd_works:
            first = _live_transitions(conninfo)
            wait_for(
                lambda: _live_transitions(conninfo) > first,
                timeout=60,
                what="the crowd's live transitions",
            )
        _one_population_and_no_gap(EmbeddedPostgres(home).running().url)
        processes = psutil.Process(demo.pid).children(recursive=True)
        postmaster = EmbeddedPostgres(home).running()
        assert postmaster is not None
        processes.append(psutil.Process(postmaster.pid))
        os.killpg(demo.pid, signal.SIGINT)
        output, _ = demo.communicate(timeout=30)
        assert demo.returncode == 0, output
        gone, alive = psutil.wait_procs(processes, timeout=10)
        assert alive == [], [p.info if hasattr(p, "info") else p for p in alive]
        assert EmbeddedPostgres(home).running() is None
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
        for process in processes:
            if process.is_running():
                process.kill()
        EmbeddedPostgres(home).stop()


def _one_population_and_no_gap(url: str) -> None:
    """The live crowd is the history's people, the teams are known, and Health sees
    no coverage gap where the history was generated (only the seconds until the
    listener connected)."""
    engine = db.make_engine(make_url(url))
    try:
        with engine.connect() as conn:
            strangers = conn.execute(
                text(
                    """
                    select count(distinct t.user_id) from presence_transitions t
                    where t.source is distinct from 'history' and not exists (
                        select 1 from presence_transitions h
                        where h.user_id = t.user_id and h.source = 'history')"""
                )
            ).scalar_one()
            teams = conn.execute(text("select count(*) from presence_teams")).scalar_one()
            started = conn.execute(
                text("select min(started_at) from presence_coverage where listener = 'history'")
            ).scalar_one()
        assert strangers == 0 and teams == 11
        gaps = analytics.coverage_gaps(engine, started, datetime.now(UTC))
        assert gaps["seconds"].sum() < 300, gaps
    finally:
        engine.dispose()


def _demo(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env["PRESENCE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "presence_core", "demo", "--no-browser", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_second_demo_is_refused(tmp_path: Path):
    import fcntl

    home = tmp_path / "home"
    home.mkdir()
    with open(home / "demo.lock", "w") as lock:  # what a running demo holds
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("4242")
        lock.flush()
        result = _demo(home, "--port", str(free_port()), "--server-port", str(free_port()))
    assert result.returncode == 1
    assert "a demo is already running" in result.stderr and "4242" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (home / "pgdata").exists()  # refused before touching anything


def test_a_port_in_use_is_refused(tmp_path: Path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _demo(tmp_path / "home", "--port", str(port), "--server-port", str(free_port()))
    assert result.returncode == 1
    assert f"port {port} for the dashboard is in use" in result.stderr
    assert "--port" in result.stderr and "Traceback" not in result.stderr


def test_the_demo_refuses_an_external_database(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env |= {"PRESENCE_HOME": str(tmp_path), "PRESENCE_DATABASE_URL": "postgresql://u@h/db"}
    result = subprocess.run(
        [sys.executable, "-m", "presence_core", "demo", "--no-browser"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "unset PRESENCE_DATABASE_URL" in result.stderr


def test_reset_deletes_the_data_and_stops_the_server(tmp_path: Path):
    from presence_core.commands.demo import _reset

    server = EmbeddedPostgres(tmp_path / "home")
    info = server.start(port=free_port())
    with psycopg.connect(info.conninfo()) as c:
        c.execute("create table leftover (v int)")
    _reset(server)
    assert server.running() is None
    assert not server.pgdata.exists()
    info = server.start(port=free_port())
    try:
        with psycopg.connect(info.conninfo()) as c:
            assert c.execute("select to_regclass('leftover')").fetchone() == (None,)
    finally:
        server.stop()
