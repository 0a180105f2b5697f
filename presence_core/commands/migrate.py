"""Upgrade the database's schema to this version of presence (Alembic, idempotent).

Works on any PostgreSQL 14 or newer. The embedded database is migrated
automatically; run this for your own PRESENCE_DATABASE_URL after installing or
upgrading presence. To review or apply the SQL by hand instead:
`alembic upgrade head --sql`.
"""

from __future__ import annotations

import argparse

from presence_core.commands.common import add_database_arguments
from presence_core.config import load_settings
from presence_core.database import engine as db
from presence_core.database.embedded import default_progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_database_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(home=args.home, database_url=args.database_url)
    engine = db.connect(settings, progress=default_progress, check=False)
    try:
        before, after = db.migrate(engine)
    finally:
        engine.dispose()
    if before == after:
        print(f"schema already at {after}")
    else:
        print(f"schema upgraded from {before or 'empty'} to {after}")
    return 0
