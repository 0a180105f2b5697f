"""Log every status transition a presence server announces into PostgreSQL, until stopped.

``presence listen``: what the listener does is :mod:`presence_core.listener`'s; this
module turns the command line and the environment into a
:class:`~presence_core.listener.Listener` and runs it until SIGINT or SIGTERM (flush,
then exit 0). The token comes from ``--token-file``, ``PRESENCE_TOKEN`` or
``PRESENCE_TOKEN_FILE`` (``--token`` works, with a warning: ``ps`` shows it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from presence_core.commands.common import add_database_arguments
from presence_core.listener.decisions import default_name, spool_name
from presence_core.listener.pipeline import WRITERS

log = logging.getLogger("presence.listener")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", metavar="URL", help="the Socket.IO server (default PRESENCE_SERVER_URL)"
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file",
        metavar="PATH",
        help="send the auth token kept in this file as {token: ...} (default PRESENCE_TOKEN, "
        "PRESENCE_TOKEN_FILE)",
    )
    token.add_argument(
        "--token",
        metavar="T",
        help="the same with the token itself (visible to every local account: prefer --token-file)",
    )
    parser.add_argument(
        "--name",
        metavar="NAME",
        help="this listener's name in coverage and heartbeat rows (default host:server); "
        "a restarted listener must keep its name to reconcile its own gap",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="serve Prometheus metrics on 127.0.0.1:P (/metrics); 0 = off (default)",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", metavar="ADDR", help="address for the metrics"
    )
    parser.add_argument(
        "--spool-dir",
        metavar="DIR",
        help="where records wait while the database is down (default PRESENCE_HOME/spool/NAME)",
    )
    parser.add_argument(
        "--writer",
        choices=WRITERS,
        default="process",
        help="where batches are written: a child process (default; receiving then never "
        "waits for writing) or a thread of this process (one process less)",
    )
    add_database_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from presence_core.config import load_settings
    from presence_core.database import engine as db
    from presence_core.database.embedded import default_progress
    from presence_core.errors import PresenceError
    from presence_core.listener import Listener

    if args.token:
        print(
            "presence: warning: --token puts a secret on the command line, where every local "
            "account can read it (ps); use --token-file or PRESENCE_TOKEN",
            file=sys.stderr,
        )
    settings = load_settings(
        home=args.home,
        database_url=args.database_url,
        server_url=args.server,
        token=args.token,
        token_file=args.token_file,
    )
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise PresenceError(f"--metrics-port {args.metrics_port} is not a port number")
    connect_args = {
        "connect_timeout": 3,
        "options": "-c timezone=UTC -c statement_timeout=30000",
    }
    engine = db.connect(settings, progress=default_progress, connect_args=connect_args)
    spool_dir = Path(args.spool_dir) if args.spool_dir else None
    listener = Listener(
        engine,
        settings.server_url,
        name=args.name,
        token=settings.token,
        spool_dir=spool_dir
        or settings.home / "spool" / spool_name(args.name or default_name(settings.server_url)),
        writer=args.writer,
        connect_args=connect_args,
    )
    metrics_server = None
    if args.metrics_port:
        from prometheus_client import start_http_server

        try:
            metrics_server, _ = start_http_server(
                args.metrics_port, addr=args.metrics_host, registry=listener.registry
            )
        except OSError as exc:
            raise PresenceError(
                f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc.strerror}"
            ) from None
        log.info("event=metrics_serving address=%s:%d", args.metrics_host, args.metrics_port)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, listener.stop)
        await listener.run()

    try:
        asyncio.run(main())
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        engine.dispose()
    return 0
