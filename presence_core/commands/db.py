"""Start, stop and inspect the embedded PostgreSQL.

The embedded server keeps its data under PRESENCE_HOME and keeps running after
`presence db start` returns; every presence process on the machine shares it.
Commands that need the database start it themselves when no
PRESENCE_DATABASE_URL is set, so `db start` is only needed to start it early.
"""

from __future__ import annotations

import argparse

from presence_core.commands.common import add_database_arguments
from presence_core.config import load_settings
from presence_core.database.embedded import EmbeddedPostgres, default_progress
from presence_core.errors import PresenceError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("start", "stop", "status", "url"),
        help="start: start (and create) it; stop: stop it; status: say whether it runs; "
        "url: print its SQLAlchemy URL (starting it if needed)",
    )
    parser.add_argument(
        "--port", type=int, help="TCP port on 127.0.0.1 (default PRESENCE_DB_PORT, else 54329)"
    )
    add_database_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(home=args.home, database_url=args.database_url)
    if settings.database_url is not None and args.action != "url":
        raise PresenceError(
            "PRESENCE_DATABASE_URL is set, so the embedded PostgreSQL is not in use; "
            "unset it to manage the embedded one"
        )
    if settings.database_url is not None:
        print(settings.database_url.render_as_string(hide_password=False))
        return 0
    server = EmbeddedPostgres(settings.home)
    if args.action == "start":
        info = server.start(port=args.port, progress=default_progress)
        from presence_core.database import engine as db

        db.connect(settings, progress=default_progress).dispose()  # migrate on first start
        print(f"running: pid {info.pid}, {info.shown_url}, data in {info.pgdata}")
    elif args.action == "stop":
        if server.stop():
            print("stopped")
        else:
            print("not running")
    elif args.action == "status":
        info = server.running()
        if info is None:
            print(f"not running (data in {server.pgdata})")
            return 3  # like pg_ctl status and systemctl: 3 = not running
        print(f"running: pid {info.pid}, {info.shown_url}, data in {info.pgdata}")
    else:
        print(server.start(port=args.port, progress=default_progress).url)
    return 0
