"""Benchmark: the dashboard's queries and the export on a generated history.

Generates a history (default 1,000 users × 30 days, about 0.5 M transitions;
``--users 5000 --days 90`` for the issue's full size, about 8.6 M) in a scratch
database on the configured server (PRESENCE_DATABASE_URL, else the embedded
one), then times each query (best of a few runs) against the issue's targets,
and against baselines measured in the same run: a full ``count(*)`` of the
transitions and a raw ``COPY presence_transitions TO STDOUT``. The export runs
as ``presence export`` in a subprocess, so its peak RSS is measured too.

    python -m bench.bench_analytics [--users N] [--days D] [--keep]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from datetime import time as dtime

import psycopg
from sqlalchemy import Engine, text

from bench.report import record, table
from presence_core import analytics
from presence_core.config import load_settings
from presence_core.database import engine as db
from presence_core.export import ExportFilters, stream_export
from presence_core.synthetic import history


def best_of(fn: Callable[[], object], runs: int = 3) -> float:
    """The fastest of ``runs`` calls, in seconds (the first call warms the cache)."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _conninfo(url) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def scratch_database(keep: bool):
    settings = load_settings()
    url = db.resolve_url(settings)
    name = f"presence_bench_{os.getpid()}"
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    bench_url = url.set(database=name)
    engine = db.make_engine(bench_url)
    db.migrate(engine)

    def drop() -> None:
        engine.dispose()
        if keep:
            print(f"kept the database: {bench_url.render_as_string(hide_password=False)}")
            return
        with psycopg.connect(_conninfo(url), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')

    return engine, bench_url, drop


def run_export(url, dataset: str, fmt: str, path: str) -> tuple[float, int]:
    """Run ``presence export`` in a subprocess; (seconds, peak RSS in MB)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env["PRESENCE_DATABASE_URL"] = url.render_as_string(hide_password=False)
    args = [sys.executable, "-c", _PEAK_RSS, "export", "--dataset", dataset]
    args += ["--format", fmt, "--output", path]
    started = time.perf_counter()
    done = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"export failed: {done.stderr.decode()}")
    peak_kb = int(done.stderr.decode().strip().splitlines()[-1])
    return elapsed, peak_kb // 1024


# runs `presence ARGS`, then prints the process's own peak RSS (VmHWM, kB) on
# stderr (ru_maxrss would include the parent's size, inherited across exec)
_PEAK_RSS = """
import sys
from presence_core.cli import main
code = main(sys.argv[1:])
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(line.split()[1], file=sys.stderr)
sys.exit(code)
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)

    engine, url, drop = scratch_database(args.keep)
    try:
        body = measure(engine, url, args)
    finally:
        drop()
    default = (args.users, args.days) == (1000, 30)
    record(
        "analytics" if default else f"analytics-{args.users}x{args.days}",
        "Analytics queries, history generator and export"
        + ("" if default else f" ({args.users:,} users × {args.days} days)"),
        body,
    )


def measure(engine: Engine, url, args) -> str:
    load_before = os.getloadavg()[0]
    end = datetime.now(UTC).replace(microsecond=0)
    print(f"generating {args.users} users × {args.days} days …", flush=True)
    started = time.perf_counter()
    rows = history.generate_history(
        engine, args.users, args.days, args.seed, end=end, rollups=False
    )
    gen_s = time.perf_counter() - started
    started = time.perf_counter()
    analytics.refresh_rollups(engine, end)
    rollup_s = time.perf_counter() - started
    with engine.begin() as conn:
        conn.execute(text("analyze"))
    print(f"  {rows:,} transitions in {gen_s:.1f} s ({rows / gen_s:,.0f}/s)", flush=True)
    print(f"  concurrency rollup built in {rollup_s:.1f} s", flush=True)

    def scan() -> None:
        with engine.connect() as conn:
            conn.execute(text("select count(*) from presence_transitions")).scalar()

    def raw_copy() -> None:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            with raw.cursor() as cursor, cursor.copy("copy presence_transitions to stdout") as c:
                for _ in c:
                    pass
            conn.rollback()

    scan_s = best_of(scan)
    copy_s = best_of(raw_copy, 1)
    print(f"  baseline: count(*) {scan_s * 1000:.0f} ms, raw COPY {rows / copy_s:,.0f} rows/s")

    period = min(args.days, 90)
    month = min(args.days, 30)
    busiest_team = pick_team(engine)
    team_tz = dict(history.TEAMS)[busiest_team]
    with engine.connect() as conn:
        some_user = conn.execute(text("select min(user_id) from presence_users")).scalar()
    queries: list[tuple[str, str, float | None, Callable[[], object]]] = [
        ("current presence", "≤ 100 ms", 0.1, lambda: analytics.current_presence(engine)),
        ("presence counts by team", "", None, lambda: analytics.presence_counts(engine, "team")),
        ("last-seen table", "≤ 300 ms", 0.3, lambda: analytics.last_seen_table(engine)),
        (
            f"{period}-day hourly concurrency",
            "≤ 1 s",
            1.0,
            lambda: analytics.concurrency(engine, end - timedelta(days=period), end, "hour", "UTC"),
        ),
        (
            f"{period}-day hourly concurrency, raw log only (no rollup)",
            "",
            None,
            lambda: analytics.concurrency(
                engine, end - timedelta(days=period), end, "hour", "UTC", rollup=False
            ),
        ),
        (
            f"{period}-day daily concurrency (New York days)",
            "",
            None,
            lambda: analytics.concurrency(
                engine, end - timedelta(days=period), end, "day", "America/New_York"
            ),
        ),
        (
            f"one team's {month}-day availability (09–17 local)",
            "≤ 500 ms",
            0.5,
            lambda: analytics.availability(
                engine,
                (end - timedelta(days=month)).date(),
                end.date(),
                team_tz,
                dtime(9),
                dtime(17),
                team=busiest_team,
            ),
        ),
        (
            "sessions, last 24 h",
            "",
            None,
            lambda: analytics.sessions(engine, end - timedelta(days=1), end),
        ),
        (
            f"daily active users, {period} days",
            "",
            None,
            lambda: analytics.daily_active_users(engine, end - timedelta(days=period), end),
        ),
        (
            f"one team's time in status, {month} days",
            "",
            None,
            lambda: analytics.time_in_status(
                engine, end - timedelta(days=month), end, team_tz, team=busiest_team
            ),
        ),
        (
            "flapping users, last 7 days",
            "",
            None,
            lambda: analytics.flapping_users(engine, end - timedelta(days=7), end),
        ),
        (
            "one user's timeline, 7 days (Activity)",
            "",
            None,
            lambda: analytics.user_timeline(engine, some_user, end - timedelta(days=7), end),
        ),
        (
            "one team's 7-day per-agent table (Availability)",
            "",
            None,
            lambda: analytics.agent_summary(
                engine,
                (end - timedelta(days=7)).date(),
                end.date(),
                team_tz,
                dtime(9),
                dtime(17),
                team=busiest_team,
            ),
        ),
    ]
    lines = []
    for name, target, limit, fn in queries:
        seconds = best_of(fn)
        met = "" if limit is None else ("yes" if seconds <= limit else "**no**")
        print(f"  {name}: {seconds * 1000:,.0f} ms {met}", flush=True)
        lines.append(
            [name, target or "–", f"{seconds * 1000:,.0f} ms", f"{seconds / scan_s:.1f}×", met]
        )

    export_rows = []
    for fmt in ("csv", "parquet"):

        def drain(fmt=fmt) -> None:
            for _ in stream_export(engine, "transitions", fmt, ExportFilters()):
                pass

        seconds = best_of(drain, 1)
        rate = rows / seconds
        print(f"  stream_export transitions {fmt}: {rate:,.0f} rows/s", flush=True)
        export_rows.append(
            [
                f"stream_export transitions, {fmt} (in process)",
                "≥ 200k rows/s",
                f"{rate:,.0f} rows/s",
                f"{rate / (rows / copy_s):.2f}× raw COPY",
                "yes" if rate >= 200_000 else "**no**",
            ]
        )
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("csv", "parquet", "jsonl"):
            seconds, rss = run_export(url, "transitions", fmt, os.path.join(tmp, f"t.{fmt}"))
            rate = rows / seconds
            print(f"  export transitions {fmt}: {rate:,.0f} rows/s, peak RSS {rss} MB", flush=True)
            export_rows.append(
                [
                    f"export transitions, {fmt}",
                    "≤ 300 MB RSS",
                    f"{rate:,.0f} rows/s, {rss} MB",
                    f"{rate / (rows / copy_s):.2f}× raw COPY",
                    "yes" if rss <= 300 else "**no**",
                ]
            )
        seconds, rss = run_export(url, "daily", "csv", os.path.join(tmp, "d.csv"))
        export_rows.append(
            [f"export daily, csv ({period} days)", "", f"{seconds:.1f} s, {rss} MB", "", ""]
        )

    load = f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    headers = ["what", "target", "measured", "vs baseline", "met"]
    summary = (
        f"{args.users:,} users × {args.days} days = **{rows:,} transitions**, generated in "
        f"{gen_s:.1f} s ({rows / gen_s:,.0f} transitions/s; target for 5,000 × 90: ≤ 180 s), "
        f"then the per-minute concurrency rollup built once in {rollup_s:.1f} s "
        "(`generate_history` does this by default). "
        f"Baselines in the same run: `select count(*)` over the transitions "
        f'{scan_s * 1000:,.0f} ms (the "vs baseline" column divides by it); raw '
        f"`COPY presence_transitions TO STDOUT` {rows / copy_s:,.0f} rows/s. Queries: best "
        f"of 3. Team: `{busiest_team}` ({team_tz}). Export rates are measured in process "
        "(`stream_export` drained); the `presence export` rows run it as a subprocess "
        "(process start included) to measure its peak RSS (`VmHWM`). Load average "
        f"(1 min) {load}: other work on the machine slows every figure alike."
    )
    return summary + "\n\n" + table(headers, lines + export_rows)


def pick_team(engine: Engine) -> str:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "select team from presence_users where team is not null"
                " group by team order by count(*) desc, team limit 1"
            )
        ).scalar_one()


if __name__ == "__main__":
    main()
