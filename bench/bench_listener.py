"""The listener's speed, each figure against a baseline measured in the same run.

(a) events/s the listener keeps up with, with zero loss, from a Node socket.io
    server emitting as fast as it can (bench/node/blaster.js), as a ratio to a
    bare python-socketio client that only counts the same events (target >= 0.7);
    the listener's clock stops when the last row is committed.
    The listener runs with its default writer process; a run with
    ``writer="thread"`` is shown beside it for comparison.
(b) the writer's rows/s (``presence_core.database.records.write_records``: binary COPY,
    idempotent fallback, users' state) as a ratio to a raw psycopg binary COPY of
    the same rows into the same table (target >= 0.5); a raw text COPY is shown
    for comparison.
(c) p50/p99 latency from emit (the event's lastSeen, set by the server) to
    committed row at 1,000 events/s (target p99 <= 250 ms).

    python -m bench.bench_listener [--events N] [--rows N] [--seconds S]

It runs its own PostgreSQL (embedded, in a temporary directory) and its own
Node server, so it touches no real data. Defaults finish in about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import socketio
from sqlalchemy import Engine, text

from bench import report
from presence_core.database import engine as db
from presence_core.database.embedded import EmbeddedPostgres
from presence_core.database.records import write_records
from presence_core.database.storage import TRANSITION_TYPES, Transition
from presence_core.listener.listener import Listener

ROOT = Path(__file__).resolve().parent.parent
BLASTER = Path(__file__).resolve().parent / "node" / "blaster.js"
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"


# CPU µs per event in run (a): this process, and the PostgreSQL server during the listener's run
CPU: dict[str, list[float]] = {
    "bare": [],
    "listener": [],
    "writer": [],
    "thread": [],
    "postgres": [],
}
PG_PID: list[int] = []


def postgres_cpu() -> float:
    """CPU seconds used so far by the bench's PostgreSQL server and its backends."""
    if not PG_PID:
        return 0.0
    import psutil

    total = 0.0
    try:
        root = psutil.Process(PG_PID[0])
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    except psutil.Error:
        pass
    return total


def writer_cpu(listener: Listener) -> float:
    """CPU seconds used so far by the listener's writer process (0 without one)."""
    import psutil

    pid = listener.pipeline.writer_pid
    if pid is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    return 0.0


# --- the emitting server ----------------------------------------------------------------


class Blaster:
    def __init__(self) -> None:
        if shutil.which("node") is None or not (NODE_MODULES / "socket.io").exists():
            raise SystemExit("needs node and tests/node/node_modules (npm ci in tests/node)")
        self.process = subprocess.Popen(
            ["node", str(BLASTER), "0"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        )
        line = self.process.stdout.readline()
        if not line.startswith("listening"):
            raise SystemExit(f"blaster did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def control(url: str) -> tuple[socketio.AsyncClient, asyncio.Queue]:
    """A client that starts runs and is not sent the events."""
    sio = socketio.AsyncClient(handle_sigint=False)
    done: asyncio.Queue = asyncio.Queue()
    sio.on("blastDone", done.put_nowait)
    await sio.connect(f"{url}?role=control", transports=["websocket"])
    return sio, done


# --- the database -------------------------------------------------------------------------


def reset(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "truncate presence_transitions, presence_users, presence_coverage,"
                " presence_listeners"
            )
        )


def count_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("select count(*) from presence_transitions")).scalar_one()


# --- (a) throughput -----------------------------------------------------------------------


async def bare_client_rate(url: str, events: int) -> float:
    """Events/s received by a python-socketio client that only counts them."""
    sio = socketio.AsyncClient(handle_sigint=False)
    got = 0
    finished = asyncio.Event()

    def count(_payload) -> None:
        nonlocal got
        got += 1
        if got >= events:
            finished.set()

    sio.on("userStatusChanged", count)
    await sio.connect(url)  # the listener's transports: polling, then the websocket upgrade
    await asyncio.sleep(0.5)  # let the upgrade settle, as it has for the listener
    ctl, done = await control(url)
    started, cpu = time.perf_counter(), time.process_time()
    await ctl.emit("blast", {"count": events, "users": 1000})
    await asyncio.wait_for(finished.wait(), 120)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await done.get()
    await sio.disconnect()
    await ctl.disconnect()
    CPU["bare"].append(cpu / events * 1e6)
    return events / elapsed


async def listener_rate(
    url: str, engine: Engine, spool: Path, events: int, writer: str = "process"
) -> tuple[float, dict]:
    """Events/s through the listener, its clock stopped at the last committed row.
    CPU is this process's only: the writer process's own is PostgreSQL-side work."""
    committed = 0
    finished = asyncio.Event()

    def written(records) -> None:
        nonlocal committed
        committed += sum(isinstance(r, Transition) for r in records)
        if committed >= events:
            finished.set()

    listener = Listener(
        engine, url, name="bench", spool_dir=spool, on_written=written, writer=writer
    )
    task = asyncio.create_task(listener.run())
    while listener.stats.reconciles < 1:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    ctl, done = await control(url)
    child = writer_cpu(listener)
    started, cpu, pg = time.perf_counter(), time.process_time(), postgres_cpu()
    await ctl.emit("blast", {"count": events, "users": 1000})
    await asyncio.wait_for(finished.wait(), 300)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    if writer == "process":
        CPU["writer"].append((writer_cpu(listener) - child) / events * 1e6)
    CPU["listener" if writer == "process" else "thread"].append(cpu / events * 1e6)
    if writer == "process":
        CPU["postgres"].append((postgres_cpu() - pg) / events * 1e6)
    await done.get()
    listener.stop()
    await task
    await ctl.disconnect()
    stored = await asyncio.to_thread(count_rows, engine)
    facts = {
        "received": listener.stats.events_received,
        "stored": stored,
        "spooled": listener.stats.spooled,
        "rejected": listener.stats.rejected,
    }
    return events / elapsed, facts


# --- (b) the writer against raw COPY ---------------------------------------------------------


def sample_rows(count: int) -> list[Transition]:
    start = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    rows = []
    for i in range(count):
        at = start + timedelta(milliseconds=i)
        status = "online" if (i // 1000) % 2 == 0 else "offline"
        rows.append(Transition(str(i % 1000), status, at, at, False, None, "bench"))
    return rows


def writer_rate(engine: Engine, rows: list[Transition], batch: int) -> float:
    reset(engine)
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        write_records(engine, rows[i : i + batch])
    elapsed = time.perf_counter() - started
    assert count_rows(engine) == len(rows)
    return len(rows) / elapsed


def copy_rate(
    url: str, rows: list[Transition], batch: int, engine: Engine, binary: bool = True
) -> float:
    reset(engine)
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    sql = (
        "copy presence_transitions (user_id, status, occurred_at, received_at, inferred,"
        " reason, source) from stdin"
    ) + (" (format binary)" if binary else "")
    with psycopg.connect(conninfo) as conn:
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            with conn.transaction(), conn.cursor() as cur, cur.copy(sql) as copy:
                if binary:
                    copy.set_types(list(TRANSITION_TYPES))
                for r in rows[i : i + batch]:
                    copy.write_row(
                        (r.user_id, r.status, r.occurred_at, r.received_at, False, None, "bench")
                    )
        elapsed = time.perf_counter() - started
    assert count_rows(engine) == len(rows)
    return len(rows) / elapsed


# --- (c) latency at a fixed rate ----------------------------------------------------------------


async def latency(url: str, engine: Engine, spool: Path, rate: int, seconds: float) -> dict:
    events = int(rate * seconds)
    lags: list[float] = []
    finished = asyncio.Event()

    def written(records) -> None:
        now = datetime.now(UTC)
        for r in records:
            if isinstance(r, Transition):
                lags.append((now - r.occurred_at).total_seconds() * 1000)
        if len(lags) >= events:
            finished.set()

    listener = Listener(engine, url, name="bench-latency", spool_dir=spool, on_written=written)
    task = asyncio.create_task(listener.run())
    while listener.stats.reconciles < 1:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    ctl, done = await control(url)
    await ctl.emit("blast", {"count": events, "users": 1000, "rate": rate})
    await asyncio.wait_for(finished.wait(), seconds * 5 + 30)
    await done.get()
    listener.stop()
    await task
    await ctl.disconnect()
    lags.sort()
    return {
        "events": len(lags),
        "p50": statistics.median(lags),
        "p99": lags[min(len(lags) - 1, int(len(lags) * 0.99))],
        "max": lags[-1],
    }


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events in run (a)")
    parser.add_argument("--rows", type=int, default=50_000, help="rows in run (b)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of run (c)")
    parser.add_argument("--rate", type=int, default=1000, help="events/s in run (c)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of (a), (b)")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args(argv if argv is not None else None)

    workdir = Path(tempfile.mkdtemp(prefix="bench-listener-"))
    server = EmbeddedPostgres(workdir / "home")
    info = server.start(port=_free_port())
    PG_PID[:] = [info.pid]
    engine = db.make_engine(info.url)
    db.migrate(engine)
    blaster = Blaster()
    try:
        # baseline and listener alternate, best of --repeat each: the machine is shared
        bares, listens, threads, lossless = [], [], [], True
        for _ in range(args.repeat):
            bares.append(asyncio.run(bare_client_rate(blaster.url, args.events)))
            reset(engine)
            for mode, rates in (("process", listens), ("thread", threads)):
                rate, facts = asyncio.run(
                    listener_rate(blaster.url, engine, workdir / "spool", args.events, mode)
                )
                rates.append(rate)
                lossless = lossless and facts["stored"] == args.events == facts["received"]
                reset(engine)
        bare, listened, threaded = max(bares), max(listens), max(threads)
        rows = sample_rows(args.rows)
        copies, texts, writers = [], [], []
        for _ in range(args.repeat):
            copies.append(copy_rate(info.url, rows, 5000, engine))
            texts.append(copy_rate(info.url, rows, 5000, engine, binary=False))
            writers.append(writer_rate(engine, rows, 5000))
        copy, text_copy, writer = max(copies), max(texts), max(writers)
        reset(engine)
        lat = asyncio.run(
            latency(blaster.url, engine, workdir / "spool-c", args.rate, args.seconds)
        )
    finally:
        blaster.close()
        engine.dispose()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    ratio_a, ratio_b = listened / bare, writer / copy
    lines = [
        [
            "(a) events/s, listener (to committed rows)",
            f"{listened:,.0f}",
            f"{bare:,.0f} (bare python-socketio client, counting only)",
            f"{ratio_a:.2f}",
            "≥ 0.7",
            _ok(ratio_a >= 0.7 and lossless),
        ],
        [
            "(b) rows/s, listener's writer (write_records, batches of 5,000)",
            f"{writer:,.0f}",
            f"{copy:,.0f} (raw psycopg binary COPY, same rows, same table)",
            f"{ratio_b:.2f}",
            "≥ 0.5",
            _ok(ratio_b >= 0.5),
        ],
        [
            f"(c) emit→committed latency at {args.rate:,} events/s, p50 / p99 (max)",
            f"{lat['p50']:.0f} / {lat['p99']:.0f} ms ({lat['max']:.0f} ms)",
            "—",
            "—",
            "p99 ≤ 250 ms",
            _ok(lat["p99"] <= 250),
        ],
    ]
    body = report.table(
        ["measure", "listener", "baseline (same run)", "ratio", "target", "met"], lines
    )
    body += (
        f"\n\nRuns (a) and (b) alternate listener and baseline {args.repeat} times and keep "
        f"the best of each (all runs, events/s: bare {_list(bares)}, listener {_list(listens)};"
        f" rows/s: binary COPY {_list(copies)}, writer {_list(writers)}). "
        f"Run (a): {args.events:,} events from a Node socket.io v4 server emitting as fast as "
        f"it can to 1,000 users, every event a transition; in the last run the listener "
        f"received {facts['received']:,}, stored {facts['stored']:,} rows, spooled "
        f"{facts['spooled']:,}, rejected {facts['rejected']:,}; "
        f"{'zero loss in every run' if lossless else 'LOSS in some run'}. "
        f"The same runs with `--writer thread` (batches committed by a thread of the "
        f"listener instead of its writer process): {_list(threads)} events/s, best "
        f"{threaded / bare:.2f} of the bare client. "
        f"CPU per event, median: bare client {_median(CPU['bare'])} µs; listener "
        f"{_median(CPU['listener'])} µs in its own process plus {_median(CPU['writer'])} µs "
        f"in its writer process (with `--writer thread`, {_median(CPU['thread'])} µs in one "
        f"process); PostgreSQL {_median(CPU['postgres'])} µs. All of it shares "
        f"{os.cpu_count()} cores with the emitting Node server. "
        f"Run (b): {args.rows:,} rows; a raw text COPY of the same rows, for comparison: "
        f"{text_copy:,.0f} rows/s (the writer is {writer / text_copy:.2f} of it). Run (c): "
        f"{lat['events']:,} events over {args.seconds:g} s; latency is the commit time minus "
        "the event's lastSeen (same machine clock, millisecond resolution)."
    )
    print(body)
    if not args.no_record:
        report.record("listener", "Listener: throughput, writer, latency", body)
    return 0


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}" if values else "?"


def _list(values: list[float]) -> str:
    return "/".join(f"{v:,.0f}" for v in values)


def _ok(flag: bool) -> str:
    return "yes" if flag else "no"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    raise SystemExit(main())
