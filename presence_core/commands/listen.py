"""Log every status transition a presence server announces into PostgreSQL, until stopped.

The listener is a python-socketio ``AsyncClient`` that speaks the guide's protocol
and needs nothing else from the server: it works against ``presence serve`` and
against the guide's own Node backend.

How it works (docs/listener.md says more):

- It connects with jittered exponential backoff, for as long as it takes. On every
  (re)connect it opens a coverage interval (``presence_coverage``), asks
  ``getOnlineUsers`` and reconciles the snapshot with the database (DESIGN
  "Semantics"): ``online`` rows for users the database missed, ``inferred``
  ``offline`` rows at the start of the gap for users who left unseen.
- Each ``userStatusChanged`` is a transition when the status changed and a
  sighting (``last_seen`` only) when it repeats. ``occurred_at`` follows DESIGN
  "Clock". Bad events are logged and counted, never written.
- Socket handlers only note what arrived; a separate writer task handles it in
  order, in batches (parse, decide), and commits them with
  :func:`presence_core.storage.write_batch` (idempotent) at least every 200 ms,
  so a slow database never stalls receiving. When the database is down, or the
  bounded queue is full, records go to an append-only spool
  (:mod:`presence_core.spool`) and are replayed, in order, when the database
  answers again.
- Its heartbeat row in ``presence_listeners`` is refreshed every few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

from presence_core.commands.common import add_database_arguments
from presence_core.listener.listener import WRITERS, Listener, _slug, default_name, log


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", metavar="URL", help="the Socket.IO server (default PRESENCE_SERVER_URL)"
    )
    parser.add_argument(
        "--token", metavar="T", help="auth token sent as {token: T} (default PRESENCE_TOKEN)"
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

    settings = load_settings(home=args.home, database_url=args.database_url, server_url=args.server)
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
        token=args.token or os.environ.get("PRESENCE_TOKEN"),
        spool_dir=spool_dir
        or settings.home / "spool" / _slug(args.name or default_name(settings.server_url)),
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
