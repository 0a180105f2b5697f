"""Run the presence server: the guide's Socket.IO protocol, with /health, until stopped.

SIGTERM or Ctrl-C stops it gracefully: nobody is marked offline (the people did not
leave, the server did), pending database writes are flushed; a second Ctrl-C forces
the exit. docs/server.md says more.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from presence_core.commands.common import add_database_arguments
from presence_core.errors import PresenceError
from presence_core.server import (
    DEFAULT_GRACE,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_PORT,
    PresenceServer,
    ServerOptions,
    auth,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--cors-origins",
        default="*",
        metavar="ORIGINS",
        help="origins allowed to connect from a browser: '*' (default) or a comma-separated list",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        metavar="S",
        help="seconds a closed connection still counts, so a reload does not flap (default 5)",
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=DEFAULT_HEARTBEAT_TIMEOUT,
        metavar="S",
        help="a connection that sends userHeartbeat and then goes silent this long is "
        "offline (default 60; 0 = never)",
    )
    parser.add_argument(
        "--auth-secret",
        metavar="SECRET",
        help=f"require signed tokens (see `presence token`); default ${auth.SECRET_ENV}",
    )
    parser.add_argument(
        "--no-db", action="store_true", help="keep presence in memory only; write nothing"
    )
    add_database_arguments(parser)


def _origins(text: str) -> str | list[str]:
    text = text.strip()
    if text == "*":
        return "*"
    return [o.strip().rstrip("/") for o in text.split(",") if o.strip()]


def run(args: argparse.Namespace) -> int:
    if args.grace < 0 or args.heartbeat_timeout < 0:
        raise PresenceError("--grace and --heartbeat-timeout cannot be negative")
    secret = args.auth_secret or os.environ.get(auth.SECRET_ENV) or None
    options = ServerOptions(
        cors_origins=_origins(args.cors_origins),
        grace=args.grace,
        heartbeat_timeout=args.heartbeat_timeout,
        auth_secret=secret,
    )
    engine = None
    if not args.no_db:
        from presence_core.config import load_settings
        from presence_core.database import engine as db

        settings = load_settings(database_url=args.database_url, home=args.home)
        engine = db.connect(settings)
    server = PresenceServer(engine, options)
    try:
        asyncio.run(server.serve(args.host, args.port))
    finally:
        if engine is not None:
            engine.dispose()
    return 0
