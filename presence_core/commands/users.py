"""Manage users: `presence users import FILE.csv` sets teams, names and types.

The CSV has a header line naming its columns: `user_id` and `team` required,
`user_name` and `user_type` optional, in any order. Users not yet known are
created (offline). An empty `user_name` or `user_type` cell leaves that field as
it is; an empty `team` cell clears the team. A malformed file is refused with
the line number, and nothing is changed: the whole file is one transaction.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from presence_core.commands.common import add_database_arguments
from presence_core.database.users import import_users, parse_users_csv
from presence_core.errors import PresenceError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = actions.add_parser(
        "import",
        help="set teams (and names, types) from a CSV of user_id,team[,user_name,user_type]",
        description=__doc__.split("\n\n", 1)[1],
    )
    imp.add_argument("file", metavar="FILE.csv", help="the CSV file ('-' for stdin)")
    add_database_arguments(imp)


def run(args: argparse.Namespace) -> int:
    import sys

    from presence_core.config import load_settings
    from presence_core.database import engine as db
    from presence_core.database.embedded import default_progress

    if args.file == "-":
        rows = parse_users_csv(io.StringIO(sys.stdin.read()), "stdin")
    else:
        path = Path(args.file)
        try:
            content = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise PresenceError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PresenceError(f"{path}: cannot read: {exc}") from None
        rows = parse_users_csv(io.StringIO(content, newline=""), str(path))
    settings = load_settings(home=args.home, database_url=args.database_url)
    engine = db.connect(settings, progress=default_progress)
    try:
        updated, created = import_users(engine, rows)
    finally:
        engine.dispose()
    print(f"imported {len(rows)} users: {updated} updated, {created} created")
    return 0
