"""Manage teams: `presence teams import FILE.csv` sets each team's time zone, shift and target.

The CSV has a header line naming its columns: `team`, `time_zone`, `shift_start` and
`shift_end` required, `target_pct` optional, in any order, for example

    team,time_zone,shift_start,shift_end,target_pct
    Support EMEA,Europe/London,08:00,16:30,80
    Night Desk,Europe/Berlin,22:00,06:00,70

Times are 24-hour HH:MM in the team's zone; an end at or before the start crosses
midnight, and 00:00,24:00 is the whole day. An empty target_pct means no target; a
file without that column leaves targets as they are. Teams not in the file are left
alone. A malformed file is refused with the line number, and nothing is changed:
the whole file is one transaction.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from presence_core.commands.common import add_database_arguments
from presence_core.database.teams import import_teams, parse_teams_csv, teams_without_users
from presence_core.errors import PresenceError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = actions.add_parser(
        "import",
        help="set time zones and shifts from a CSV of team,time_zone,shift_start,shift_end"
        "[,target_pct]",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("file", metavar="FILE.csv", help="the CSV file ('-' for stdin)")
    add_database_arguments(imp)


def read_csv_text(argument: str) -> tuple[io.StringIO, str]:
    """The text of the CSV named on the command line ('-': stdin) and the name to use
    in messages; a missing or unreadable file is a PresenceError."""
    name = "stdin" if argument == "-" else argument
    try:
        if argument == "-":
            content = sys.stdin.buffer.read().decode("utf-8-sig")
        else:
            content = Path(argument).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PresenceError(f"{name}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PresenceError(f"{name}: cannot read: {exc}") from None
    return io.StringIO(content, newline=""), name


def run(args: argparse.Namespace) -> int:
    from presence_core.config import load_settings
    from presence_core.database import engine as db
    from presence_core.database.embedded import default_progress

    lines, name = read_csv_text(args.file)
    parsed = parse_teams_csv(lines, name)
    settings = load_settings(home=args.home, database_url=args.database_url)
    engine = db.connect(settings, progress=default_progress)
    try:
        updated, created = import_teams(engine, parsed)
        empty = teams_without_users(engine, [t.team for t in parsed.teams])
    finally:
        engine.dispose()
    count = len(parsed.teams)
    print(f"imported {count} team{'' if count == 1 else 's'}: {updated} updated, {created} created")
    if empty:
        print(f"note: no user is in {', '.join(map(repr, empty))} yet")
    return 0
