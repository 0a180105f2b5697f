"""`presence demo --no-browser` from an empty PRESENCE_HOME, end to end, then Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import psycopg
import pytest

from presence_core.embedded import EmbeddedPostgres
from tests.conftest import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _live_transitions(conninfo: str) -> int:
    try:
        with psycopg.connect(conninfo, connect_timeout=3) as conn:
            return conn.execute(
                "select count(*) from presence_transitions where source is distinct from"
                " 'history' and received_at > now() - interval '1 minute'"
            ).fetchone()[0]
    except psycopg.Error:
        return 0


def test_demo_runs_and_stops_cleanly(tmp_path: Path):
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
        conninfo = f"host=127.0.0.1 port={db_port} user=postgres dbname=presence"
        first = wait_for(lambda: _live_transitions(conninfo), timeout=60, what="live transitions")
        wait_for(
            lambda: _live_transitions(conninfo) > first, timeout=60, what="more live transitions"
        )
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
