"""Recording a cluster's history (issue 14): ``presence listen`` connected to one node
records users who live on another; a listener SIGKILLed and restarted leaves no gap
and no duplicate; two listeners at once add no duplicate.

Real processes throughout: three ``presence serve --redis`` nodes, ``presence listen``
as a child process, ``redis-server``, the test's PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.cluster_harness import ROOT, Cluster, cluster, transitions
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


class ListenerProcess:
    """``presence listen --server URL --name NAME`` in a process group of its own."""

    def __init__(self, env: dict, url: str, name: str, workdir: Path) -> None:
        self.env, self.url, self.name = env, url, name
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self, engine) -> ListenerProcess:
        """Start it and wait until it is connected (its coverage interval is open)."""
        opened = open_coverage(engine, self.name)
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "presence_core", "listen", "--server", self.url]
                + ["--name", self.name, "--spool-dir", str(self.workdir / f"spool-{self.name}")]
                + ["--writer", "thread"],
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def connected() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            return open_coverage(engine, self.name) > opened

        wait_for(connected, 60, interval=0.1, what=f"listener {self.name} connected")
        return self

    def kill(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


def open_coverage(engine, name: str) -> int:
    """How many coverage intervals this listener has opened so far."""
    with engine.connect() as conn:
        return conn.execute(
            text("select count(*) from presence_coverage where listener = :n"), {"n": name}
        ).scalar_one()


@contextlib.contextmanager
def listeners(env: dict, workdir: Path):
    started: list[ListenerProcess] = []

    def make(url: str, name: str) -> ListenerProcess:
        listener = ListenerProcess(env, url, name, workdir)
        started.append(listener)
        return listener

    try:
        yield make
    finally:
        for listener in started:
            listener.stop()


def recorded(engine) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for row in transitions(engine):
        rows.setdefault(row["user_id"], []).append(row["status"])
    return rows


def wait_recorded(engine, group: Cluster, expected: dict[str, list[str]]) -> None:
    last = {}

    def done() -> bool:
        nonlocal last
        last = recorded(engine)
        return last == expected

    try:
        wait_for(done, 30, interval=0.2, what="the history recorded exactly once")
    except AssertionError as error:
        rows = [
            (r["user_id"], r["status"], r["occurred_at"].isoformat(), r["reason"], r["source"])
            for r in transitions(engine)
        ]
        raise AssertionError(f"{error}: expected {expected}, got {last}\n{rows}") from None


def activity_on_c(group: Cluster, round_: int, tabs: dict) -> None:
    """Users who live on n3 come, change status and go (a fixed script per round)."""
    if round_ == 0:
        tabs["c-1"] = group.tab("n3", "c-1")
        tabs["c-2"] = group.tab("n3", "c-2", v2=True)
        tabs["c-3"] = group.tab("n3", "c-3")
        tabs["c-1"].set_status("away")
    elif round_ == 1:
        tabs["c-1"].set_status("busy")
        tabs["c-2"].leave()
        tabs["c-4"] = group.tab("n3", "c-4")
        tabs["c-3"].close()  # offline after the grace
        tabs["c-2b"] = group.tab("n3", "c-2")  # back: a new online
    else:
        tabs["c-1"].set_status("online")
        tabs["c-4"].leave()
        tabs["c-5"] = group.tab("n3", "c-5")


EXPECTED = [
    {"c-1": ["online", "away"], "c-2": ["online"], "c-3": ["online"]},
    {
        "c-1": ["online", "away", "busy"],
        "c-2": ["online", "offline", "online"],
        "c-3": ["online", "offline"],
        "c-4": ["online"],
    },
    {
        "c-1": ["online", "away", "busy", "online"],
        "c-2": ["online", "offline", "online"],
        "c-3": ["online", "offline"],
        "c-4": ["online", "offline"],
        "c-5": ["online"],
    },
]


def test_a_listener_on_node_a_killed_and_restarted_leaves_no_gap_and_no_duplicate(
    tmp_path, redis_server, database_url, engine, cli_env
):
    """Nodes and a listener both write: each transition is in the history once."""
    with (
        cluster(tmp_path, redis_server.url, 3, database_url) as group,
        listeners(cli_env, tmp_path / "listeners") as listener,
    ):
        group.watch([group["n1"]])
        recorder = listener(group["n1"].url, "on-a").start(engine)
        tabs: dict = {}
        activity_on_c(group, 0, tabs)
        wait_recorded(engine, group, EXPECTED[0])

        recorder.kill()  # SIGKILL: no flush, no goodbye
        activity_on_c(group, 1, tabs)
        group.wait_seen("c-3", ["online", "offline"], timeout=group.grace + 20)
        # the nodes recorded the gap (the listener's reconcile then finds nothing to add)
        wait_recorded(engine, group, EXPECTED[1])
        recorder.start(engine)  # same name: it reconciles the gap its name left
        activity_on_c(group, 2, tabs)
        group.fence("n3")
        wait_recorded(engine, group, EXPECTED[2])
        assert not any(r["inferred"] for r in transitions(engine))


def test_two_listeners_record_once_and_cover_each_others_gap(
    tmp_path, redis_server, database_url, engine, cli_env
):
    """The nodes write nothing: two listeners (on n1 and n2) are the only record of users
    on n3. Together they add no duplicate, and while one is killed and restarted the
    other keeps the history whole."""
    with (
        cluster(tmp_path, redis_server.url, 3) as group,  # nodes without a database
        listeners(cli_env, tmp_path / "listeners") as listener,
    ):
        group.watch([group["n1"]])
        first = listener(group["n1"].url, "ha-1").start(engine)
        listener(group["n2"].url, "ha-2").start(engine)
        tabs: dict = {}
        activity_on_c(group, 0, tabs)
        wait_recorded(engine, group, EXPECTED[0])

        first.kill()
        activity_on_c(group, 1, tabs)
        group.wait_seen("c-3", ["online", "offline"], timeout=group.grace + 20)
        wait_recorded(engine, group, EXPECTED[1])
        first.start(engine)
        activity_on_c(group, 2, tabs)
        group.fence("n3")
        wait_recorded(engine, group, EXPECTED[2])
        rows = transitions(engine)
        assert {r["source"] for r in rows} <= {"ha-1", "ha-2"}
