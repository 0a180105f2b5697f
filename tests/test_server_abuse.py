"""The server against careless and hostile clients, with real processes: a status flood
beside a real listener writing the same database, half-open connections by the
thousand, descriptors running out, junk frames, secrets on the command line, and
user mistakes that must be one line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from datetime import timedelta

from sqlalchemy import text

from presence_core.server.state import MAX_AHEAD
from tests.conftest import free_port
from tests.server_harness import running_server
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
