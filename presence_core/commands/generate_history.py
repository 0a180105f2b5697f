"""Write the synthetic organisation's past straight to the database.

The organisation's first --users people (the same people `presence simulate
--seed S` connects live) over --days days ending now: teams in their own time zones
and shifts (a night desk across midnight), lunch and short breaks as `away`, calls
as `busy`, weekends off (some work Saturdays), absences of a few days and the
occasional flapping connection. The same seed gives the same history. Besides the
transitions it records the period as observed (so Health shows no gap), sets
`presence_users` as of now, and writes the teams' zones, shifts and targets to
`presence_teams` (teams already configured, e.g. by `presence teams import`, are
left as they are).
"""

from __future__ import annotations

import argparse
import os
import sys
import time as clock

from presence_core.commands.common import add_database_arguments
from presence_core.synthetic.history import Progress, generate_history


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=200, help="how many users (default 200)")
    parser.add_argument(
        "--days", type=int, default=30, help="how many days, ending now (default 30)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="the organisation: same seed, same people and history (default 1)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="processes simulating and writing users in parallel (default: the CPUs, "
        f"at most {MAX_WORKERS}; the same history whatever the number)",
    )
    add_database_arguments(parser)


MAX_WORKERS = 4


def default_workers() -> int:
    """One worker per CPU (at most :data:`MAX_WORKERS`): the generator is CPU-bound in
    Python and PostgreSQL alike, and users are independent."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def terminal_progress(stream=None) -> Progress | None:
    """A one-line progress bar on ``stream`` (stderr) when it is a terminal, else None."""
    out = stream or sys.stderr
    if not out.isatty():
        return None
    started = clock.monotonic()

    def show(done: int, total: int, rows: int) -> None:
        width = 30
        filled = int(width * done / total)
        rate = rows / max(clock.monotonic() - started, 1e-6)
        out.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} users, "
            f"{rows:,} transitions ({rate:,.0f}/s)"
        )
        if done >= total:
            out.write("\n")
        out.flush()

    return show


def run(args: argparse.Namespace) -> int:
    from presence_core.config import load_settings
    from presence_core.database import engine as db
    from presence_core.database.embedded import default_progress

    settings = load_settings(home=args.home, database_url=args.database_url)
    engine = db.connect(settings, progress=default_progress)
    try:
        started = clock.monotonic()
        written = generate_history(
            engine,
            args.users,
            args.days,
            args.seed,
            progress=terminal_progress(),
            workers=args.workers,
        )
    finally:
        engine.dispose()
    print(
        f"wrote {written:,} transitions for {args.users} users over {args.days} days "
        f"in {clock.monotonic() - started:.1f} s"
    )
    return 0
