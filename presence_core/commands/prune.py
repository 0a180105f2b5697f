"""`presence prune --before DATE [--dry-run]`: drop whole months of raw transitions.

Only whole UTC months strictly before DATE's month go: `--before 2026-03-15`
keeps March and drops February and every month before it. Without --before,
PRESENCE_RETENTION_MONTHS=N keeps the current month and the N before it.
Rollups (the summaries the dashboard and exports read) are kept; the
concurrency rollup is first brought up to the boundary. Refused, with nothing
changed, when the months are not covered by a listener, not yet rolled up, or
rows for them wait in the default partition; see docs/operations.md.
--dry-run says what would go and changes nothing.
"""

from __future__ import annotations

import argparse
from datetime import date

from presence_core.commands.common import add_database_arguments
from presence_core.errors import PresenceError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--before",
        metavar="DATE",
        help="drop whole months before this date's month (YYYY-MM-DD, UTC months); "
        "default: PRESENCE_RETENTION_MONTHS months before the current one",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would be dropped, change nothing"
    )
    add_database_arguments(parser)


def parse_date(value: str) -> date:
    """A --before value, or :class:`PresenceError` naming it."""
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise PresenceError(f"--before {value!r} is not a date (YYYY-MM-DD)") from None


def run(args: argparse.Namespace) -> int:
    from presence_core.analytics.rollups import refresh_rollups
    from presence_core.config import load_settings
    from presence_core.database import engine as db
    from presence_core.database import retention
    from presence_core.database.embedded import default_progress

    settings = load_settings(home=args.home, database_url=args.database_url)
    if args.before is not None:
        boundary = retention.boundary_of(parse_date(args.before))
    elif settings.retention_months is not None:
        boundary = retention.months_ago(settings.retention_months)
    else:
        raise PresenceError("give --before DATE, or set PRESENCE_RETENTION_MONTHS")
    # retention writes: always the primary, never PRESENCE_READ_DATABASE_URL
    engine = db.connect(settings, progress=default_progress)
    try:
        # the concurrency rollup is computed on demand: brought up to the boundary first
        report = retention.prune(engine, boundary, dry_run=args.dry_run, refresh=refresh_rollups)
    finally:
        engine.dispose()
    print(describe(report))
    return 0


def describe(report) -> str:
    """What was (or would be) removed, one line per month and a total."""
    when = f"{report.boundary:%Y-%m-%d}"
    if not report.months:
        if report.already_before is not None and report.already_before >= report.boundary:
            return f"nothing to prune: months before {report.already_before:%Y-%m-%d} already were"
        return f"nothing to prune: no transitions before {when}"
    verb = "would drop" if report.dry_run else "dropped"
    lines = [f"{verb} {m.month:%Y-%m}: {m.rows:,} transitions" for m in report.months]
    count = len(report.months)
    total = (
        f"{verb} {count} month{'' if count == 1 else 's'} before {when} (UTC), "
        f"{report.rows:,} transitions; "
        f"{report.carried:,} user{'' if report.carried == 1 else 's'} present at {when} "
        f"{'would be' if report.dry_run else 'were'} carried over; rollups kept"
    )
    for name in report.refreshed:
        done = "would first be" if report.dry_run else "was first"
        lines.append(f"the {name} rollup {done} brought up to {when}")
    if report.dry_run:
        total += "; nothing changed (--dry-run)"
    return "\n".join([*lines, total])
