"""``presence serve --loop``: the same server under uvloop (the default: lower latency
under load, docs/server.md) and under asyncio's own loop.

A real ``presence serve`` process under each loop must serve a guide client and a
version-2 client alike, and say in ``/health`` which loop it runs, so a flag that
silently kept the other loop would fail here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.server_harness import Client, LoopThread


@contextmanager
def serving(*flags: str) -> Iterator[str]:
    """`presence serve --no-db --port 0 FLAGS` in a process of its own; yields its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "presence_core", "serve", "--no-db", "--port", "0", *flags],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("presence server listening on"), process.stderr.read()
        yield line.split()[-1]
    finally:
        process.terminate()
        try:
            assert process.wait(20) == 0, process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(["--loop", "uvloop"], "uvloop"), (["--loop", "asyncio"], "asyncio"), ([], "uvloop")],
)
def test_serve_runs_under_the_loop_asked_for(flags, expected):
    loop = LoopThread()
    try:
        with serving(*flags) as url:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:
                assert json.load(answer)["loop"] == expected
            guide = Client(loop, url)
            guide.connect()
            watcher = Client(loop, url, auth={"protocol": 2})
            watcher.connect()
            ack = watcher.call("subscribe", {"teams": ["A"]})
            assert ack == {"ok": True, "seq": 0, "users": []}
            user = Client(loop, url)
            user.connect()
            user.emit("userOnline", {"userId": 7, "userName": "Ann", "team": "A"})
            assert guide.wait_change(7, "online")["userId"] == 7
            assert watcher.wait_diff_change(7, "online")["team"] == "A"
            assert [d["seq"] for d in watcher.diffs()] == [1]
            assert [u["userId"] for u in guide.online_list()] == [7]
            for client in (guide, watcher, user):
                client.close()
    finally:
        loop.close()


def test_asking_for_uvloop_where_it_is_missing_is_one_line(monkeypatch, capsys):
    from presence_core import cli
    from presence_core.commands import serve

    real = serve.importlib.util.find_spec
    monkeypatch.setattr(
        serve.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "uvloop" else real(name, *a),
    )
    assert serve.loop_factory("asyncio") is None
    assert cli.main(["serve", "--no-db", "--port", "0", "--loop", "uvloop"]) == 1
    assert "uvloop is not installed" in capsys.readouterr().err


def test_the_default_loop_falls_back_to_asyncio_with_one_line(monkeypatch, capsys):
    """Where uvloop cannot be installed (Windows), the default still serves, on
    asyncio's loop, and says so once; an explicit --loop uvloop is refused above."""
    from presence_core.commands import serve

    real = serve.importlib.util.find_spec
    monkeypatch.setattr(
        serve.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "uvloop" else real(name, *a),
    )
    assert serve.loop_factory(None) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "uvloop is not installed" in err and "asyncio" in err


def test_the_collector_is_tuned_for_a_server():
    import gc

    from presence_core.commands import serve

    thresholds = gc.get_threshold()
    try:
        serve.tune_gc()
        assert gc.get_freeze_count() > 0  # what start-up made is out of every collection
        assert gc.get_threshold()[0] >= 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
