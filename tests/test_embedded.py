"""The embedded PostgreSQL, for real: start, stop, restarts, races and recoveries."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest

from presence_core.database import embedded
from presence_core.database.embedded import EmbeddedError, EmbeddedPostgres
from tests.conftest import free_port
from tests.waiting import wait_for


def conninfo(info: embedded.ServerInfo) -> str:
    return f"host=127.0.0.1 port={info.port} user=postgres dbname=presence"


@pytest.fixture
def server(tmp_path: Path):
    server = EmbeddedPostgres(tmp_path / "home")
    yield server
    server.stop()


def test_data_survives_stop_and_start(server):
    info = server.start(port=free_port())
    with psycopg.connect(conninfo(info), autocommit=True) as conn:
        conn.execute("create table kept (v text)")
        conn.execute("insert into kept values ('still here')")
    assert server.stop() is True
    assert server.running() is None
    assert server.stop() is False  # stopping twice is not an error
    info = server.start(port=free_port())
    with psycopg.connect(conninfo(info)) as conn:
        assert conn.execute("select v from kept").fetchone() == ("still here",)


def test_start_when_running_returns_the_same_server(server):
    first = server.start(port=free_port())
    assert server.start() == first
    assert EmbeddedPostgres(server.home).running() == first


def test_two_processes_starting_at_once_get_one_server(tmp_path):
    home = tmp_path / "home"
    code = (
        "import sys; from presence_core.database.embedded import EmbeddedPostgres; "
        "print(EmbeddedPostgres(sys.argv[1]).start().pid)"
    )
    env = {**os.environ, "PRESENCE_DB_PORT": str(free_port())}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(home)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outputs]
        pids = {out.strip() for out, _ in outputs}
        assert len(pids) == 1
        postmasters = [
            p
            for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "postgres" and str(home / "pgdata") in (p.info["cmdline"] or [])
        ]
        assert len(postmasters) == 1
    finally:
        EmbeddedPostgres(home).stop()


def test_a_requested_port_in_use_is_a_clear_error(server):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(EmbeddedError, match=f"port {port} .* in use.*PRESENCE_DB_PORT"):
            server.start(port=port)
    assert server.running() is None


def test_default_port_in_use_falls_back_to_a_free_one(server, monkeypatch):
    messages: list[str] = []
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setattr(embedded, "DEFAULT_PORT", busy.getsockname()[1])
        monkeypatch.delenv("PRESENCE_DB_PORT", raising=False)
        info = server.start(progress=messages.append)
        assert info.port != busy.getsockname()[1]
    assert any("in use" in m and str(info.port) in m for m in messages)
    with psycopg.connect(conninfo(info)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_unwritable_home_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(EmbeddedError, match="PRESENCE_HOME .* is not writable"):
        EmbeddedPostgres(blocker / "home").start()


def test_foreign_directory_is_refused(tmp_path):
    home = tmp_path / "home"
    (home / "pgdata").mkdir(parents=True)
    (home / "pgdata" / "something").write_text("x")
    with pytest.raises(EmbeddedError, match="not a PostgreSQL data directory"):
        EmbeddedPostgres(home).start()


def test_recovers_from_a_killed_server(server):
    info = server.start(port=free_port())
    postmaster = psutil.Process(info.pid)
    children = postmaster.children(recursive=True)
    os.kill(info.pid, signal.SIGKILL)
    psutil.wait_procs([postmaster, *children], timeout=30)
    assert (server.pgdata / "postmaster.pid").exists()  # the crash left it behind
    assert server.running() is None
    messages: list[str] = []
    again = server.start(port=free_port(), progress=messages.append)
    assert again.pid != info.pid
    assert any("stale" in m for m in messages)


def test_recovers_from_a_pid_file_naming_another_live_process(server):
    info = server.start(port=free_port())
    server.stop()
    # a reboot can hand the old pid to an unrelated process: fake that with our own pid
    lines = ["0", str(server.pgdata), "0", str(info.port), "", "127.0.0.1", "0 0", "ready"]
    lines[0] = str(os.getpid())
    (server.pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")
    assert server.running() is None
    assert server.start(port=free_port()).pid != os.getpid()


@pytest.mark.may_skip
@pytest.mark.skipif(os.geteuid() != 0, reason="only meaningful when run as root")
def test_runs_as_an_unprivileged_account_when_root(server):
    info = server.start(port=free_port())
    assert psutil.Process(info.pid).username() == embedded.SYSTEM_USER
    wait_for(lambda: server.running() is not None, what="server running")


def test_cli_db_commands(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env |= {"PRESENCE_HOME": str(tmp_path / "home"), "PRESENCE_DB_PORT": str(free_port())}

    def presence(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "presence_core", "db", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        status = presence("status")
        assert status.returncode == 3 and "not running" in status.stdout
        started = presence("start")
        assert started.returncode == 0, started.stderr
        assert "running: pid" in started.stdout
        url = presence("url").stdout.strip()
        assert url == f"postgresql+psycopg://postgres@127.0.0.1:{env['PRESENCE_DB_PORT']}/presence"
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            # the embedded database is migrated on first start
            assert conn.execute("select version_num from alembic_version").fetchone()
        assert presence("status").returncode == 0
        stopped = presence("stop")
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
        assert presence("status").returncode == 3
    finally:
        EmbeddedPostgres(tmp_path / "home").stop()
