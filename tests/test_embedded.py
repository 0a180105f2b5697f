"""The embedded PostgreSQL, for real: start, stop, restarts, races and recoveries."""

from __future__ import annotations

import os
import re
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
    return info.conninfo()


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


def test_the_server_is_sized_from_the_machine(server):
    """A quarter of the memory for buffers, between PostgreSQL's default and 2 GB,
    4 GB of WAL between checkpoints, and the started server really runs with what
    it was given."""
    gib = 1024**3
    assert "shared_buffers=128MB " in embedded.sizing_options(256 * 1024**2)
    assert "shared_buffers=1024MB " in embedded.sizing_options(4 * gib)
    assert "shared_buffers=2048MB " in embedded.sizing_options(24 * gib)
    assert "effective_cache_size=12288MB " in embedded.sizing_options(24 * gib)
    assert embedded.sizing_options(24 * gib).endswith("max_wal_size=4GB")
    info = server.start(port=free_port())
    wanted = dict(re.findall(r"-c (\w+)=(\w+)", embedded.sizing_options()))
    with psycopg.connect(conninfo(info)) as conn:
        for name, value in wanted.items():
            shown = conn.execute(f"select current_setting('{name}')").fetchone()[0]
            assert _mb(shown) == _mb(value), (name, shown, value)


def _mb(setting: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(kB|MB|GB)", setting).groups()
    return int(number) * {"kB": 1, "MB": 1024, "GB": 1024 * 1024}[unit] // 1024


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
        port = env["PRESENCE_DB_PORT"]
        assert re.fullmatch(
            rf"postgresql\+psycopg://postgres:[\w-]{{20,}}@127\.0\.0\.1:{port}/presence", url
        )
        assert url.split("@")[0].split(":")[-1] not in started.stdout  # no password in status lines
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            # the embedded database is migrated on first start
            assert conn.execute("select version_num from alembic_version").fetchone()
        assert presence("status").returncode == 0
        stopped = presence("stop")
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
        assert presence("status").returncode == 3
    finally:
        EmbeddedPostgres(tmp_path / "home").stop()


OTHER_ACCOUNT = "presence_other"


def _other_account() -> str:
    """A second real local account (created when missing; needs root)."""
    import pwd

    try:
        pwd.getpwnam(OTHER_ACCOUNT)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                OTHER_ACCOUNT,
            ],
            check=True,
            capture_output=True,
        )
    return OTHER_ACCOUNT


def _as_other(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a program as the second account (the suite's Python lives under root's private
    home, so the other account uses the wheel's own psql and plain system tools)."""
    import pwd

    entry = pwd.getpwnam(_other_account())
    return subprocess.run(
        list(argv),
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin", "HOME": "/", "PGCONNECT_TIMEOUT": "5"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )


def _connects_as_other(port: int) -> list[str]:
    """The roles the second account manages to connect as, without a password."""
    psql = embedded._bin("psql")
    return [
        user
        for user in ("postgres", embedded.SYSTEM_USER, OTHER_ACCOUNT)
        if _as_other(
            psql, "-w", f"host=127.0.0.1 port={port} user={user} dbname=presence", "-c", "select 1"
        ).returncode
        == 0
    ]


@pytest.mark.may_skip
@pytest.mark.skipif(os.geteuid() != 0, reason="creating a second local account needs root")
def test_only_its_owner_can_connect(server):
    info = server.start(port=free_port())
    with psycopg.connect(info.conninfo()) as conn:  # the owner, with the generated password
        assert conn.execute("select current_user").fetchone() == ("postgres",)
    assert (server.password_path.stat().st_mode & 0o777) == 0o600
    assert _connects_as_other(info.port) == []
    # nor can it read the password, even knowing where it is
    stolen = _as_other("/bin/cat", str(server.password_path))
    assert stolen.returncode != 0 and info.password not in stolen.stdout


@pytest.mark.may_skip
@pytest.mark.skipif(os.geteuid() != 0, reason="creating a second local account needs root")
def test_a_data_directory_that_trusted_everyone_is_switched_to_passwords(server):
    info = server.start(port=free_port())
    # make it look like one created by an older version: trust for every local connection
    server._write_as_server(server.pgdata / "pg_hba.conf", "host all all 127.0.0.1/32 trust\n")
    with psycopg.connect(info.conninfo("postgres"), autocommit=True) as conn:
        conn.execute("select pg_reload_conf()")
    assert "postgres" in _connects_as_other(info.port)  # the hole the switch closes
    server.stop()

    info = server.start(port=free_port())
    assert _connects_as_other(info.port) == []
    with psycopg.connect(info.conninfo()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
