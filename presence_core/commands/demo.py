"""The whole product in one command, on the embedded PostgreSQL.

Migrates the database, writes about 30 days of history for a few hundred users
when it is empty, then starts the presence server, the listener, a simulated
crowd and the dashboard, prints the dashboard's URL and opens a browser.
Ctrl-C (or SIGTERM) stops everything it started, the embedded database
included; the data stays for the next run (--reset starts from empty).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import webbrowser
from pathlib import Path

from presence_core.config import load_settings
from presence_core.database import engine as db
from presence_core.database.embedded import EmbeddedPostgres, default_progress
from presence_core.errors import PresenceError

STOP_TIMEOUT_S = 6
READY_TIMEOUT_S = 90
SEED = 1  # one synthetic organisation: the history's people are the live crowd's
CROWD_SPEED = 60  # the live crowd lives a simulated minute per second


class DemoError(PresenceError):
    """The demo cannot start."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument(
        "--port", type=int, default=8501, help="dashboard port on 127.0.0.1 (default 8501)"
    )
    parser.add_argument(
        "--server-port", type=int, default=4100, help="presence server port (default 4100)"
    )
    parser.add_argument(
        "--users", type=int, default=60, help="simulated users connected live (default 60)"
    )
    parser.add_argument(
        "--history-users", type=int, default=300, help="users in the generated history"
    )
    parser.add_argument("--history-days", type=int, default=30, help="days of generated history")
    parser.add_argument(
        "--reset", action="store_true", help="delete the demo's data and start from empty"
    )
    parser.add_argument("--home", metavar="DIR", help="overrides PRESENCE_HOME")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(home=args.home)
    if settings.database_url is not None:
        raise DemoError(
            "the demo runs on the embedded database; unset PRESENCE_DATABASE_URL to run it"
        )
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    with _single_demo(home):
        for port, what in ((args.port, "dashboard"), (args.server_port, "presence server")):
            if not _port_free(port):
                option = "--port" if what == "dashboard" else "--server-port"
                raise DemoError(
                    f"port {port} for the {what} is in use; choose another with {option}"
                )
        server = EmbeddedPostgres(home)
        if args.reset:
            _reset(server)
        was_running = server.running() is not None
        demo = Demo(args, settings, server, stop_database=not was_running)
        return demo.run()


class Demo:
    """The running demo: its child processes and how to stop them."""

    def __init__(self, args, settings, server: EmbeddedPostgres, stop_database: bool) -> None:
        self.args = args
        self.settings = settings
        self.server = server
        self.stop_database = stop_database
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            started = time.monotonic()
            engine = db.connect(self.settings, progress=default_progress)
            self._ensure_history(engine)
            engine.dispose()
            self._start_children()
            url = f"http://127.0.0.1:{self.args.port}"
            self._wait_ready(url)
            print(
                f"presence demo is ready in {time.monotonic() - started:.0f} s: {url}\n"
                "  (Ctrl-C stops everything; the data stays for the next run)",
                flush=True,
            )
            if not self.args.no_browser:
                webbrowser.open(url)
            return self._watch()
        except _Stop:
            return 0
        finally:
            self._stop_all()

    # -- steps --------------------------------------------------------------------

    def _ensure_history(self, engine) -> None:
        from sqlalchemy import text

        with engine.connect() as conn:
            empty = conn.execute(text("select not exists (select 1 from presence_transitions)"))
            if not empty.scalar_one():
                return
        from presence_core.synthetic import history

        users = max(self.args.history_users, self.args.users)  # everyone live has a past
        say(f"writing {self.args.history_days} days of history for {users} users …")
        history.generate_history(engine, users=users, days=self.args.history_days, seed=SEED)

    def _start_children(self) -> None:
        server_url = f"http://127.0.0.1:{self.args.server_port}"
        env = {**os.environ, "PRESENCE_HOME": str(self.settings.home)}
        env.pop("PRESENCE_DATABASE_URL", None)
        command = [sys.executable, "-m", "presence_core"]
        self._spawn(
            "server",
            [*command, "serve", "--host", "127.0.0.1", "--port", str(self.args.server_port)],
            env,
        )
        self._wait_port(self.args.server_port, "presence server")
        self._spawn("listener", [*command, "listen", "--server", server_url], env)
        self._spawn(
            "simulator",
            [
                *command,
                "simulate",
                "--server",
                server_url,
                "--users",
                str(self.args.users),
                "--seed",
                str(SEED),
                "--speed",
                str(CROWD_SPEED),
                "--duration",
                "12h",
                "--quiet",
            ],
            env,
        )
        self._spawn("dashboard", [*command, "dashboard", "--port", str(self.args.port)], env)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        if self.stopping:
            raise _Stop
        log = open(self.settings.home / f"demo-{name}.log", "ab")  # noqa: SIM115 - kept open
        process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        self.children.append((name, process))

    def _wait_port(self, port: int, what: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _accepts(port):
            self._check_children()
            if time.monotonic() > deadline:
                raise DemoError(f"the {what} did not start on port {port}")
            time.sleep(0.1)

    def _wait_ready(self, url: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            self._check_children()
            if _healthy(f"{url}/_stcore/health"):
                return
            if time.monotonic() > deadline:
                raise DemoError(f"the dashboard did not answer at {url} within {READY_TIMEOUT_S} s")
            time.sleep(0.2)

    def _watch(self) -> int:
        while True:
            self._check_children()
            time.sleep(0.5)

    def _check_children(self) -> None:
        if self.stopping:
            raise _Stop
        for name, process in self.children:
            code = process.poll()
            if code is not None:
                log = self.settings.home / f"demo-{name}.log"
                raise DemoError(f"the {name} exited with status {code}; see {log}")

    # -- stopping -----------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True
        raise _Stop

    def _stop_all(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("stopping …")
        for _, process in reversed(self.children):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for _, process in self.children:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.stop_database:
            with contextlib.suppress(PresenceError):
                self.server.stop()
        say("stopped")


class _Stop(Exception):
    """Raised inside the main loop when a stop signal arrives."""


@contextlib.contextmanager
def _single_demo(home: Path):
    path = home / "demo.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            raise DemoError(
                f"a demo is already running on {home} (pid {pid}); stop it with Ctrl-C first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)


def _reset(server: EmbeddedPostgres) -> None:
    say(f"--reset: deleting {server.pgdata}")
    server.stop()
    shutil.rmtree(server.pgdata, ignore_errors=True)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def say(message: str) -> None:
    default_progress(message)
