"""The server against careless and hostile clients, with real processes: a status flood
beside a real listener writing the same database, half-open connections by the
thousand, descriptors running out, junk frames, secrets on the command line, and
user mistakes that must be one line."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import text

from presence_core.server import auth
from presence_core.server.state import MAX_AHEAD
from tests.conftest import free_port
from tests.server_harness import Client, LoopThread, running_server
from tests.test_server_fuzz import MALFORMED_FRAMES, NOT_ENGINE_IO
from tests.waiting import wait_for

FLOOD = 10_000
FLOODER = """
import asyncio, json, sys
import aiohttp

async def main(url, count):
    refused, events, messages = 0, set(), set()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url + "/socket.io/?EIO=4&transport=websocket") as ws:
            await ws.receive_str()
            await ws.send_str("40")
            await ws.receive_str()
            await ws.send_str('42["userOnline",{"userId":"flood","userType":"agent"}]')
            for number in range(count):  # as fast as it can: no waiting for answers
                await ws.send_str('42["userStatus",{"userId":"flood","status":"busy-%d"}]' % number)
            await ws.send_str('42["userOffline",{"userId":"flood"}]')
            while True:
                frame = await asyncio.wait_for(ws.receive_str(), 60)
                if frame == "2":
                    await ws.send_str("3")
                    continue
                event, payload = json.loads(frame[2:])
                if event == "presenceError":
                    refused += 1
                    events.add(payload["event"])
                    messages.add(payload["message"])
                elif payload.get("status") == "offline":
                    break
    print(json.dumps({"refused": refused, "events": sorted(events), "messages": sorted(messages)}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def presence(*args: str, env: dict, **kwargs) -> subprocess.Popen:
    """``presence ARGS`` in a child process (text pipes)."""
    return subprocess.Popen(
        [sys.executable, "-m", "presence_core", *args],
        env={**env, "PYTHONPATH": os.getcwd()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


class Lines:
    """Every line a child process writes to one of its pipes, collected by a thread."""

    def __init__(self, pipe) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        for line in pipe:
            self.lines.append(line)

    def having(self, needle: str) -> list[str]:
        return [line for line in list(self.lines) if needle in line]

    def text(self) -> str:
        self._thread.join(10)
        return "".join(self.lines)


def presence_flooder(url: str, env: dict) -> subprocess.Popen:
    """A raw Socket.IO client in a process of its own: userOnline, FLOOD userStatus
    changes sent without waiting, userOffline; prints what it was answered as JSON."""
    return subprocess.Popen(
        [sys.executable, "-c", FLOODER, url, str(FLOOD)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def scrape(port: int, metric: str) -> float:
    """One value from a Prometheus endpoint on 127.0.0.1:port (0 when not there yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            body = answer.read().decode()
    except OSError:
        return 0.0
    found = re.search(rf"^{metric}(?:{{[^}}]*}})? (\S+)$", body, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_status_flood_is_limited_and_each_transition_is_stored_once(engine, cli_env):
    """Issue 12, point 1: 10,000 userStatus changes as fast as a client can send them,
    then userOffline, with the server and a real `presence listen` both writing one
    database. The flood is refused beyond the user's rate (presenceError naming the
    limit), no time runs ahead of now, and every transition is one row: the logout
    once."""
    with running_server(engine) as srv:
        metrics = free_port()
        listener = presence(
            "listen", "--server", srv.url, "--name", "flood", "--metrics-port", str(metrics),
            env=cli_env,
        )  # fmt: skip
        logged = Lines(listener.stderr)
        try:
            # the listener has compared the server's list with the database: what it
            # writes from now on is what it hears
            wait_for(lambda: logged.having("event=reconciled"), 30, what="listener reconciled")
            watcher = srv.client()
            flooder = presence_flooder(srv.url, env=cli_env)
            out, err = flooder.communicate(timeout=120)
            assert flooder.returncode == 0, err
            answers = json.loads(out)
            watcher.wait_change("flood", "offline", timeout=60)
            heard = watcher.received("userStatusChanged")
            wait_for(
                lambda: scrape(metrics, "presence_listener_events_received_total") >= len(heard),
                60,
                what="the listener heard every broadcast",
            )
            listener.send_signal(signal.SIGTERM)  # flushes what it received, then exits 0
            assert listener.wait(60) == 0, logged.text()
            srv.flush()
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.wait()
        assert answers["refused"], "the flood was not limited"
        assert answers["events"] == ["userStatus"]
        limit = "too fast (limit: 5 status changes a second per user (bursts of 20))"
        assert any(limit in message for message in answers["messages"])
        assert answers["refused"] + len(heard) - 2 == FLOOD  # each change: applied or refused

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "select status, occurred_at, received_at, source, clock_timestamp() as now"
                " from presence_transitions where user_id = 'flood' order by occurred_at, id"
            )
        ).all()
    assert [r.status for r in rows] == [p["status"] for p in heard]  # one row each, in order
    assert [r.status for r in rows].count("offline") == 1
    assert len({r.occurred_at for r in rows}) == len(rows)
    for row in rows:  # no stored time ahead of now, or of when it was received
        assert row.occurred_at <= row.now
        assert row.occurred_at - row.received_at <= MAX_AHEAD + timedelta(milliseconds=1)
    assert {r.source for r in rows} <= {"server", "flood"}


# --- `presence serve` as a process ----------------------------------------------------


@pytest.fixture
def plain_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no PRESENCE_* settings but a home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env["PRESENCE_HOME"] = str(tmp_path / "home")
    return env


@dataclass
class Served:
    process: subprocess.Popen
    port: int
    log: Lines  # its stderr

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self, timeout: float = 5) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as answer:
            return json.load(answer)

    def stop(self) -> str:
        """SIGTERM, wait for a clean exit, and return everything it logged."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(30) == 0, self.log.text()
        return self.log.text()


@contextmanager
def serve(*flags: str, env: dict, files: int | None = None) -> Iterator[Served]:
    """``presence serve --no-db FLAGS`` on a free port, its soft limit on open files
    set to ``files`` when given (the usual 1,024, say)."""
    port = free_port()

    def limit_files() -> None:
        if files is not None:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (files, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
            )

    process = presence(
        "serve", "--no-db", "--port", str(port), *flags, env=env, preexec_fn=limit_files
    )
    try:
        line = process.stdout.readline()
        log = Lines(process.stderr)
        assert line.startswith("presence server listening on"), log.text()
        yield Served(process, port, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_flags(request: pytest.FixtureRequest) -> tuple[str, str]:
    """``--loop`` for the connection guard's tests: the guard must hold under both
    loops (uvloop's own servers accept in C, where the guard would see nothing)."""
    return ("--loop", request.param)


def half_open(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, each with an HTTP request begun and never finished."""
    need = count + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:  # the attacker needs the descriptors, not the server
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        held.append(sock)
    return held


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def announce_within(url: str, user: str, timeout: float) -> float:
    """Seconds a real Socket.IO client takes to connect and be announced online."""
    loop = LoopThread()
    try:
        started = time.monotonic()
        client = Client(loop, url)
        client.connect()
        client.emit("userOnline", {"userId": user})
        client.wait_change(user, "online", timeout=timeout)
        took = time.monotonic() - started
        client.close()
        return took
    finally:
        loop.close()


def test_half_open_connections_lock_nobody_out(plain_env, loop_flags):
    """Issue 12, point 3: 2,000 half-sent requests against a server under the usual
    limit of 1,024 open files, all from the real client's own address. /health
    answers and a real client connects and announces itself at once; nothing floods
    the log."""
    with serve(*loop_flags, env=plain_env, files=1024) as srv:
        held = half_open(srv.port, 2000)
        try:
            started = time.monotonic()
            health = srv.health(timeout=5)
            health_took = time.monotonic() - started
            announce_took = announce_within(srv.url, "real", timeout=5)
            assert health_took < 1 and announce_took < 1, (health_took, announce_took)
            after = srv.health()
            assert after["tcp_evicted"] > 0  # half-open ones made way
            assert after["tcp_connections"] < 1024 and after["descriptor_shortages"] == 0
            assert health["closing"] is False
        finally:
            for sock in held:
                sock.close()
        logged = srv.stop()
    assert "Traceback" not in logged and "Too many open files" not in logged
    assert len(logged.splitlines()) <= 5, logged


def test_waiting_connections_time_out_and_busy_ones_stay(plain_env, loop_flags):
    """A connection that never completes its request, one that sends nothing, and a
    kept-alive one left idle are closed after their timeouts; a Socket.IO client in
    use is not."""
    timeouts = ("--header-timeout", "0.5", "--idle-timeout", "0.5")
    with serve(*timeouts, *loop_flags, env=plain_env) as srv:
        loop = LoopThread()
        try:
            client = Client(loop, srv.url)
            client.connect()
            client.emit("userOnline", {"userId": 1})
            client.wait_change(1, "online")
            [partial] = half_open(srv.port, 1)
            silent = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            kept = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert kept.recv(4096).startswith(b"HTTP/1.1 200")
            for sock in (partial, silent, kept):
                with sock:
                    while sock.recv(4096):  # until the server closes it (10 s: a failure)
                        pass
            health = srv.health()
            assert health["tcp_timed_out"] >= 3 and health["tcp_evicted"] == 0
            assert client.sio.connected and client.call("userHeartbeat", {"userId": 1})["ok"]
            client.close()
        finally:
            loop.close()
        srv.stop()


def connect_from(source: str, port: int) -> socket.socket:
    """A TCP connection to the server from ``source`` (any 127.x.y.z is this machine)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def in_use(source: str, port: int) -> socket.socket:
    """A connection in use: an Engine.IO WebSocket, upgraded, held open."""
    sock = connect_from(source, port)
    sock.sendall(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101"), "not upgraded"
    return sock


def answer(sock: socket.socket, request: bytes | None = None) -> bytes:
    """Everything the server sends on ``sock`` until it closes it, after ``request``
    (None: nothing, as a refused connection must not have unread data: that would
    make the server's close a reset that can discard its 503)."""
    with sock:
        if request is not None:
            sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):  # until the server closes it (10 s: a failure)
            received += chunk
    return received


def closed(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (waiting at most its timeout)."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:  # closed with the partial request unread
        return True


HEALTH = b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n"  # HTTP/1.0: not chunked


def test_caps_make_way_for_newcomers_and_refuse_when_full(plain_env, loop_flags):
    """The caps at work, connection by connection: an address at its cap in use gets
    503, a newcomer to a full server makes the oldest waiting connection go, and a
    server full of connections in use answers 503 too."""
    caps = ("--max-connections", "3", "--max-per-address", "2")
    with serve(*caps, *loop_flags, env=plain_env) as srv:
        held = [in_use("127.0.0.1", srv.port), in_use("127.0.0.1", srv.port)]
        try:
            refused = answer(connect_from("127.0.0.1", srv.port))
            assert refused.startswith(b"HTTP/1.1 503"), refused
            assert refused.endswith(b"too many connections\n")
            waiting = connect_from("127.0.0.2", srv.port)  # the server is full now
            held.append(waiting)
            waiting.sendall(b"GET /health HTTP/1.1\r\n")  # never finished
            health = answer(connect_from("127.0.0.3", srv.port), HEALTH)
            assert health.startswith(b"HTTP/1.1 200"), health
            assert closed(waiting)  # it made way
            stats = json.loads(health.split(b"\r\n\r\n", 1)[1])
            assert stats["tcp_refused"] == 1 and stats["tcp_evicted"] == 1
            held.append(in_use("127.0.0.2", srv.port))
            full = answer(connect_from("127.0.0.3", srv.port))
            assert full.startswith(b"HTTP/1.1 503"), full
        finally:
            for sock in held:
                sock.close()
        assert wait_for(lambda: _try_health(srv), 10)["tcp_refused"] >= 2
        logged = srv.stop()
    assert "connections refused (over the connection caps)" in logged
    assert "Traceback" not in logged


def test_running_out_of_descriptors_backs_off_quietly(plain_env, loop_flags):
    """When descriptors run out anyway (here: the limit lowered under a running
    server), accepting backs off instead of spinning, the log gets a line a minute,
    and the server frees descriptors so that /health answers again."""
    with serve("--header-timeout", "60", *loop_flags, env=plain_env) as srv:
        pid = srv.process.pid
        hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
        open_now = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_now + 150, hard))
        cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
        held = half_open(srv.port, 600)
        try:
            health = wait_for(lambda: _try_health(srv), 20, what="/health answering")
            assert health["descriptor_shortages"] > 0  # the path was taken
            busy = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
            assert busy < 0.5, f"the server used {busy:.0%} of a core"
            assert announce_within(srv.url, "real", timeout=10) < 10
        finally:
            for sock in held:
                sock.close()
        logged = srv.stop()
    assert "Traceback" not in logged
    shortage = [line for line in logged.splitlines() if "no file descriptor" in line]
    assert 1 <= len(shortage) <= 2 and len(logged.splitlines()) <= 6, logged


def _try_health(srv: Served) -> dict | None:
    try:
        return srv.health(timeout=2)
    except OSError:
        return None


# --- junk frames and user mistakes: one line -------------------------------------------


def test_junk_frames_make_one_rate_limited_line(plain_env):
    """Issue 12, point 8: every kind of malformed Socket.IO and engine.io frame, 50
    times over, makes one log line and one summary line: no traceback per frame."""

    async def send_junk(url: str) -> None:
        ws_url = url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
        async with aiohttp.ClientSession() as session:
            for _ in range(50):
                for frame in MALFORMED_FRAMES + NOT_ENGINE_IO:
                    async with session.ws_connect(ws_url) as ws:
                        await ws.receive_str()
                        await ws.send_str("40")
                        await ws.receive_str()
                        await ws.send_str(frame)
                        await ws.send_str('42["getOnlineUsers"]')
                        await ws.receive()  # an answer, or the server closing

    with serve(env=plain_env) as srv:
        loop = LoopThread()
        try:
            loop.run(send_junk(srv.url), timeout=120)
        finally:
            loop.close()
        health = srv.health()
        logged = srv.stop()
    assert "Traceback" not in logged
    lines = logged.splitlines()
    assert len(lines) <= 4, f"{len(lines)} lines"
    assert any(re.search(r"^\S+ \S+ WARNING .*malformed frames: ", line) for line in lines)
    assert any(re.search(r"\d+ malformed frames in the last \d+ s", line) for line in lines)
    assert health["malformed_frames"] >= 50 * 10  # counted, every one


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_a_port_out_of_range_is_one_line(plain_env, port):
    done = subprocess.run(
        [sys.executable, "-m", "presence_core", "serve", "--no-db", "--port", port],
        env={**plain_env, "PYTHONPATH": os.getcwd()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"presence: error: --port {port} is not a port: use 0 to 65535"
    ]


# --- secrets: never needed on the command line -----------------------------------------

SECRET = "file-secret-0123456789"


def test_secrets_come_from_files_and_arguments_are_warned_about(plain_env, tmp_path):
    """Issue 12, point 7: `presence token --secret-file` and `presence serve
    --auth-secret-file` need no secret on the command line; giving one there still
    works, with a one-line warning on stderr."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    env = {**plain_env, "PYTHONPATH": os.getcwd()}

    def token(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "presence_core", "token", "--user", "7", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    from_file = token("--secret-file", str(secret_file))
    assert from_file.returncode == 0 and from_file.stderr == ""
    assert auth.verify_token(from_file.stdout.strip(), SECRET).user_id == "7"
    from_argument = token("--secret", SECRET)
    assert from_argument.returncode == 0
    [warning] = from_argument.stderr.splitlines()
    assert warning.startswith("presence: warning: --secret puts a secret on the command line")
    assert "--secret-file" in warning
    missing = token("--secret-file", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1

    with serve("--auth-secret-file", str(secret_file), env=plain_env) as srv:
        loop = LoopThread()
        try:
            refused = Client(loop, srv.url)
            with pytest.raises(Exception):  # noqa: B017 (socketio's ConnectionError)
                refused.connect()
            client = Client(loop, srv.url, auth={"token": from_file.stdout.strip()})
            client.connect()
            client.emit("userOnline")
            client.wait_change("7", "online")
            client.close()
        finally:
            loop.close()
        assert "warning" not in srv.stop()
    with serve("--auth-secret", SECRET, env=plain_env) as srv:
        logged = srv.stop()
    assert logged.splitlines()[0].startswith("presence: warning: --auth-secret puts a secret")
    assert "--auth-secret-file" in logged.splitlines()[0]
