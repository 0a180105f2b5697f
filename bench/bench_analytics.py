"""Benchmark: the dashboard's queries and the export on a generated history.

Generates a history (default 1,000 users × 30 days, about 0.5 M transitions;
``--users 5000 --days 90`` for the issue's full size, about 8.6 M) in a scratch
database on the configured server (PRESENCE_DATABASE_URL, else the embedded
one), then times each query (best of a few runs) against the issue's targets,
and against baselines measured in the same run: a full ``count(*)`` of the
transitions and a raw ``COPY presence_transitions TO STDOUT``. The export runs
as ``presence export`` in a subprocess, so its peak RSS is measured too.

    python -m bench.bench_analytics [--users N] [--days D] [--keep] [--workers W]
    python -m bench.bench_analytics --reuse presence_bench_1234   # measure a kept one again
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
from bench.write_cost import write_cost
from presence_core import analytics
from presence_core.commands.generate_history import default_workers
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


def scratch_database(keep: bool, reuse: str | None = None):
    """A fresh database on the configured server, migrated (or, with ``reuse``, a
    database kept by an earlier ``--keep`` run); returns (engine, url, drop)."""
    settings = load_settings()
    url = db.resolve_url(settings)
    name = reuse or f"presence_bench_{os.getpid()}"
    if reuse is None:
        with psycopg.connect(_conninfo(url), autocommit=True) as conn:
            conn.execute(f'create database "{name}"')
    bench_url = url.set(database=name)
    engine = db.make_engine(bench_url)
    db.migrate(engine)

    def drop() -> None:
        engine.dispose()
        if keep or reuse is not None:
            print(f"kept the database {name!r} (measure it again with --reuse {name})")
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


def csv_rows(path: str) -> int:
    """Data rows of a CSV export (header excluded; no cell holds a line break here)."""
    count = -1
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
    return count


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
    parser.add_argument(
        "--reuse",
        metavar="NAME",
        help="measure again a database kept by --keep, without generating (it is kept)",
    )
    parser.add_argument(
        "--targets-only",
        action="store_true",
        help="skip the raw-log references and the in-process transitions streams",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="generate-history's worker processes (default: as the command)",
    )
    parser.add_argument(
        "--write-cost",
        action="store_true",
        help="only measure the listener's writer with the summaries kept on write",
    )
    parser.add_argument("--rows", type=int, default=50_000, help="rows for --write-cost")
    args = parser.parse_args(argv)

    if args.write_cost:
        engine, url, drop = scratch_database(False)
        try:
            body = write_cost(engine, url, args.rows)
        finally:
            drop()
        record(
            "write-cost",
            "Writer with the summaries kept on write (migrations 0005, 0007)",
            body,
        )
        return
    engine, url, drop = scratch_database(args.keep, args.reuse)
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
    if args.reuse:
        rows, end = _kept_history(engine)
        with engine.connect() as conn:
            args.users = conn.execute(text("select count(*) from presence_users")).scalar()
        args.days = round((end - _kept_start(engine)).total_seconds() / 86400)
        generated = (
            f"{args.users:,} users × {args.days} days = **{rows:,} transitions**, measured "
            f"again on the database kept by an earlier run (`--reuse {args.reuse}`: not "
            "generated in this run). "
        )
        print(f"reusing {args.reuse}: {rows:,} transitions up to {end:%Y-%m-%d %H:%M}", flush=True)
    else:
        end = datetime.now(UTC).replace(microsecond=0)
        generated, rows = _generate(engine, url, args, end)
    with engine.begin() as conn:
        conn.execute(text("analyze"))

    def scan() -> None:
        with engine.connect() as conn:
            conn.execute(text("select count(*) from presence_transitions")).scalar()

    def raw_copy() -> None:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            with (
                raw.cursor() as cursor,
                cursor.copy("copy (select * from presence_transitions) to stdout") as c,
            ):
                for _ in c:
                    pass
            conn.rollback()

    scan_s = best_of(scan)
    copy_s = best_of(raw_copy, 1)
    print(f"  baseline: count(*) {scan_s * 1000:.0f} ms, raw COPY {rows / copy_s:,.0f} rows/s")

    lines = [
        [name, target or "–", f"{seconds * 1000:,.0f} ms", f"{seconds / scan_s:.1f}×", met]
        for name, target, seconds, met in run_queries(engine, args.days, end, args.targets_only)
    ]
    export_rows = _exports(
        engine, url, rows, copy_s, args.days, args.targets_only, reused=bool(args.reuse)
    )

    load = f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    headers = ["what", "target", "measured", "vs baseline", "met"]
    summary = (
        generated + f"Baselines in the same run: `select count(*)` over the transitions "
        f'{scan_s * 1000:,.0f} ms (the "vs baseline" column divides by it); raw '
        f"`COPY presence_transitions TO STDOUT` {rows / copy_s:,.0f} rows/s. Queries: best "
        "of 3 (warm), raw-log variants (the reference path, for comparison) once. Targets "
        "are issue 16's (set for 5,000 users × 365 days and 20,000 × 90). Export rates are "
        "measured in process (`stream_export` drained); the `presence export` rows run it "
        "as a subprocess (process start included) to measure its peak RSS (`VmHWM`). Load "
        f"average (1 min) {load}, on 2 cores shared with other work: it slows every figure "
        "alike, hence the baseline column."
    )
    return summary + "\n\n" + table(headers, lines + export_rows)


def _generate(engine: Engine, url, args, end: datetime) -> tuple[str, int]:
    """Generate the history as ``generate-history`` does, rollups included, timed end to
    end (after the same generator without summaries on a tenth of the users, the
    baseline); its sentence for the report, and the rows."""
    sample = max(1, args.users // 10)
    print(f"baseline: {sample} users × {args.days} days without summaries …", flush=True)
    bare_rate = _generation_without_summaries(engine, url, sample, args, end)
    print(f"generating {args.users} users × {args.days} days, rollups included …", flush=True)
    chunks_done = [0.0]

    def progress(done: int, total: int, rows: int) -> None:
        chunks_done[0] = time.perf_counter()  # the last call: every chunk is written

    started = time.perf_counter()
    rows = history.generate_history(
        engine, args.users, args.days, args.seed, end=end, workers=args.workers, progress=progress
    )
    total_s = time.perf_counter() - started
    gen_s = chunks_done[0] - started
    rollup_s = total_s - gen_s
    rate = rows / total_s
    print(f"  {rows:,} transitions in {total_s:.1f} s ({rate:,.0f}/s end to end)", flush=True)
    print(f"  of which the rollups (and the coverage mark) {rollup_s:.1f} s", flush=True)
    met = "met" if total_s <= 480 else "**not met**"
    sentence = (
        f"{args.users:,} users × {args.days} days = **{rows:,} transitions**, generated as "
        f"`generate-history` does, rollups included, in **{total_s:.1f} s** "
        f"({total_s / 60:.1f} min, {rate:,.0f} transitions/s end to end) by {args.workers} "
        f"worker process(es): the rows with their summaries (computed by the generator and "
        f"copied in the same transactions, migration 0008) {gen_s:.1f} s, then the "
        f"concurrency rollup {rollup_s:.1f} s (built from the sessions written when the "
        f"table held nothing else; otherwise refreshed by the SQL). Target for 5,000 × 365, "
        f"rollups included: ≤ 8 min"
        + (
            f", {met}"
            if rows >= 30_000_000
            else f" (its 32.7 M transitions would take about {32_700_000 / rate / 60:.1f} min "
            "at this rate, which is not the full size's: only a full-size run tells)"
        )
        + f". Baseline: the same generator and workers writing only the raw rows, "
        f"triggers off, no rollups, for the first {sample:,} users: {bare_rate:,.0f} "
        f"transitions/s (end to end with summaries and rollups: {rate / bare_rate:.2f} of it). "
    )
    return sentence, rows


def _kept_history(engine: Engine) -> tuple[int, datetime]:
    """(transitions, the generator's end) of a kept database."""
    with engine.connect() as conn:
        rows = conn.execute(text("select count(*) from presence_transitions")).scalar()
        end = conn.execute(
            text("select max(ended_at) from presence_coverage where listener = :s"),
            {"s": history.SOURCE},
        ).scalar()
    return rows, end


def _kept_start(engine: Engine) -> datetime:
    with engine.connect() as conn:
        return conn.execute(
            text("select min(started_at) from presence_coverage where listener = :s"),
            {"s": history.SOURCE},
        ).scalar()


def run_queries(
    engine: Engine, days: int, end: datetime, targets_only: bool = False
) -> list[tuple[str, str, float, str]]:
    """Each view of issue 16's target table at its size (a year, 90 days, 30 days,
    7 days: shorter when the history is), then the raw-log reference of the heavy
    ones; (what, target, seconds, met)."""
    year, period, month, week = min(days, 365), min(days, 90), min(days, 30), min(days, 7)
    busiest_team = pick_team(engine)
    team_tz = dict(history.TEAMS)[busiest_team]
    with engine.connect() as conn:
        some_user = conn.execute(text("select min(user_id) from presence_users")).scalar()
    ago = lambda n: end - timedelta(days=n)  # noqa: E731
    targets: list[tuple[str, str, float | None, Callable[[], object]]] = [
        ("current presence", "≤ 50 ms", 0.05, lambda: analytics.current_presence(engine)),
        ("presence counts by team", "", None, lambda: analytics.presence_counts(engine, "team")),
        ("last-seen table", "≤ 150 ms", 0.15, lambda: analytics.last_seen_table(engine)),
        (
            f"daily active users, {year} days (summaries)",
            "≤ 300 ms",
            0.3,
            lambda: analytics.daily_active_users(engine, ago(year), end),
        ),
        (
            f"one team's {month}-day availability (09–17 local, {busiest_team})",
            "≤ 150 ms",
            0.15,
            lambda: analytics.availability(
                engine,
                ago(month).date(),
                end.date(),
                team_tz,
                dtime(9),
                dtime(17),
                team=busiest_team,
            ),
        ),
        (
            f"one team's time in status, {month} days (summaries)",
            "≤ 200 ms",
            0.2,
            lambda: analytics.time_in_status(engine, ago(month), end, team_tz, team=busiest_team),
        ),
        (
            f"flapping users, {week} days",
            "≤ 200 ms",
            0.2,
            lambda: analytics.flapping_users(engine, ago(week), end),
        ),
        (
            f"{period}-day hourly concurrency",
            "≤ 300 ms",
            0.3,
            lambda: analytics.concurrency(engine, ago(period), end, "hour", "UTC"),
        ),
        (
            f"{year}-day daily concurrency (New York days)",
            "≤ 300 ms",
            0.3,
            lambda: analytics.concurrency(engine, ago(year), end, "day", "America/New_York"),
        ),
        (
            "sessions, last 24 h",
            "",
            None,
            lambda: analytics.sessions(engine, ago(1), end),
        ),
        (
            f"one team's {month}-day seconds online per day (summaries; for availability)",
            "",
            None,
            lambda: analytics.status_seconds(engine, ago(month), end, team_tz, team=busiest_team),
        ),
        (
            f"daily summary, all users, {year} days (summaries)",
            "",
            None,
            lambda: analytics.daily_summary(engine, ago(year), end, "UTC"),
        ),
        (
            "one user's timeline, 7 days (Activity)",
            "",
            None,
            lambda: analytics.user_timeline(engine, some_user, ago(week), end),
        ),
        (
            "one team's 7-day per-agent table (Availability)",
            "",
            None,
            lambda: analytics.agent_summary(
                engine,
                ago(week).date(),
                end.date(),
                team_tz,
                dtime(9),
                dtime(17),
                team=busiest_team,
            ),
        ),
    ]
    # the reference definitions, once each: what the summaries and rollups save
    raw: list[tuple[str, Callable[[], object]]] = [
        (
            f"{period}-day hourly concurrency, raw log only (no rollup)",
            lambda: analytics.concurrency(engine, ago(period), end, "hour", "UTC", rollup=False),
        ),
        (
            f"daily active users, {year} days, raw log",
            lambda: analytics.daily_active_users(engine, ago(year), end, rollup=False),
        ),
        (
            f"one team's time in status, {month} days, raw log",
            lambda: analytics.time_in_status(
                engine, ago(month), end, team_tz, team=busiest_team, rollup=False
            ),
        ),
        (
            f"daily summary, all users, {period} days, raw log",
            lambda: analytics.daily_summary(engine, ago(period), end, "UTC", rollup=False),
        ),
    ]
    measured = []
    for name, target, limit, fn in targets:
        seconds = best_of(fn)
        met = "" if limit is None else ("yes" if seconds <= limit else "**no**")
        print(f"  {name}: {seconds * 1000:,.0f} ms {met}", flush=True)
        measured.append((name, target, seconds, met))
    for name, fn in [] if targets_only else raw:
        seconds = best_of(fn, 1)
        print(f"  {name}: {seconds * 1000:,.0f} ms", flush=True)
        measured.append((name, "", seconds, ""))
    return measured


def _exports(
    engine: Engine,
    url,
    rows: int,
    copy_s: float,
    days: int,
    targets_only: bool = False,
    reused: bool = False,
) -> list[list[str]]:
    """The export rows: in process (rate) and as ``presence export`` (rate, peak RSS),
    each file deleted once measured (a year's JSON lines is several GB)."""
    copy_rate = rows / copy_s
    export_rows = []
    for fmt in () if targets_only else ("csv", "parquet"):

        def drain(fmt=fmt) -> None:
            for _ in stream_export(engine, "transitions", fmt, ExportFilters()):
                pass

        seconds = best_of(drain, 1)
        rate = rows / seconds
        print(f"  stream_export transitions {fmt}: {rate:,.0f} rows/s", flush=True)
        export_rows.append(
            [
                f"stream_export transitions, {fmt} (in process)",
                "",
                f"{rate:,.0f} rows/s",
                f"{rate / copy_rate:.2f}× raw COPY",
                "",
            ]
        )
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("csv", "parquet", "jsonl"):
            path = os.path.join(tmp, f"t.{fmt}")
            seconds, rss = run_export(url, "transitions", fmt, path)
            os.unlink(path)
            rate = rows / seconds
            print(f"  export transitions {fmt}: {rate:,.0f} rows/s, peak RSS {rss} MB", flush=True)
            export_rows.append(
                [
                    f"export transitions, {fmt} (all {rows:,} rows)",
                    "≤ 300 MB RSS",
                    f"{rate:,.0f} rows/s, {rss} MB",
                    f"{rate / copy_rate:.2f}× raw COPY",
                    "yes" if rss <= 300 else "**no**",
                ]
            )
    newlines = 0

    def drain_daily() -> None:
        nonlocal newlines
        newlines = 0
        for chunk in stream_export(engine, "daily", "csv", ExportFilters()):
            newlines += chunk.count(b"\n")

    # the first read of whole past local days fills their per-zone cache (cold);
    # the second reads it (warm). On a --reuse database an earlier run may have
    # filled it already: then both are warm, and the text says so.
    cold_s = best_of(drain_daily, 1)
    daily = newlines - 1
    warm_s = best_of(drain_daily, 2)
    assert newlines - 1 == daily, (newlines, daily)
    cold, warm = daily / cold_s, daily / warm_s
    print(f"  stream_export daily: cold {cold:,.0f} rows/s, warm {warm:,.0f} rows/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "d.csv")
        seconds, rss = run_export(url, "daily", "csv", path)
        exported = csv_rows(path)
        os.unlink(path)
    assert exported == daily, (exported, daily)
    rate = daily / seconds
    print(f"  export daily: {daily:,} rows, {rate:,.0f} rows/s, {rss} MB", flush=True)
    first = "first read in this run" + (
        ", cache possibly filled by an earlier run" if reused else ""
    )
    export_rows += [
        [
            f"stream_export daily, csv, cold ({first}; in process; all {days} days: "
            f"{daily:,} rows)",
            "",
            f"{cold:,.0f} rows/s ({cold_s:.1f} s)",
            "",
            "",
        ],
        [
            "stream_export daily, csv, warm (same rows, best of 2 after the cold one)",
            "≥ 200k rows/s",
            f"{warm:,.0f} rows/s ({warm_s:.1f} s)",
            "",
            "yes" if warm >= 200_000 else "**no**",
        ],
        [
            "export daily, csv (the same rows, warm)",
            "≤ 300 MB RSS",
            f"{rate:,.0f} rows/s ({seconds:.1f} s), {rss} MB",
            "",
            "yes" if rss <= 300 else "**no**",
        ],
    ]
    return export_rows


def _generation_without_summaries(engine: Engine, url, users: int, args, end: datetime) -> float:
    """Transitions/s of ``generate_history`` (same workers) writing only the raw rows
    (every trigger off: no summaries, no rollup invalidation; set on the database, so
    the workers' own connections have it too); the tables are emptied afterwards."""
    name = url.database
    plain = db.make_engine(url)
    try:
        with plain.begin() as conn:
            conn.execute(text(f'alter database "{name}" set session_replication_role = replica'))
        plain.dispose()
        try:
            started = time.perf_counter()
            rows = history.generate_history(
                plain,
                users,
                args.days,
                args.seed,
                end=end,
                rollups=False,
                bulk=False,
                workers=args.workers,
            )
            rate = rows / (time.perf_counter() - started)
        finally:
            with plain.begin() as conn:
                conn.execute(text(f'alter database "{name}" reset session_replication_role'))
        plain.dispose()
        with plain.begin() as conn:
            conn.execute(text("truncate presence_transitions, presence_users, presence_coverage"))
    finally:
        plain.dispose()
        engine.dispose()  # no pooled connection keeps the setting
    return rate


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
