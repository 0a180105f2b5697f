"""Run the presence server: the guide's Socket.IO protocol, with /health, until stopped.

SIGTERM or Ctrl-C stops it gracefully: nobody is marked offline (the people did not
leave, the server did), pending database writes are flushed; a second Ctrl-C forces
the exit. docs/server.md says more.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import sys
from collections.abc import Callable, Coroutine

from presence_core.commands.common import add_database_arguments
from presence_core.commands.token import warn_secret_on_command_line
from presence_core.errors import PresenceError
from presence_core.server import (
    DEFAULT_DIFF_INTERVAL,
    DEFAULT_GRACE,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_NODE_TIMEOUT,
    DEFAULT_PORT,
    WATCH_POLICIES,
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
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "--auth-secret-file",
        metavar="PATH",
        help="require signed tokens (see `presence token`), signed with the secret in this "
        f"file (default ${auth.SECRET_ENV}, ${auth.SECRET_ENV}_FILE)",
    )
    secret.add_argument(
        "--auth-secret",
        metavar="SECRET",
        help="the same with the secret itself (visible to every local account: prefer "
        "--auth-secret-file)",
    )
    limits = parser.add_argument_group("connection limits")
    limits.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="connections held at once (default: as many as the file limit, ulimit -n, "
        "allows, less a reserve)",
    )
    limits.add_argument(
        "--max-per-address",
        type=int,
        metavar="N",
        help="connections held at once from one client address (default: half of "
        "--max-connections; 0 = no cap; behind a reverse proxy every client has its address)",
    )
    limits.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT,
        metavar="S",
        help="a connection must deliver a complete request this soon (default 10)",
    )
    limits.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="S",
        help="a kept-alive HTTP connection may wait this long for its next request (default 5)",
    )
    v2 = parser.add_argument_group("protocol version 2 (clients that connect with protocol: 2)")
    v2.add_argument(
        "--diff-interval",
        type=float,
        default=DEFAULT_DIFF_INTERVAL,
        metavar="S",
        help="each subscribed client gets at most one presenceDiff this often (default 0.2)",
    )
    v2.add_argument(
        "--watch-policy",
        choices=WATCH_POLICIES,
        default="all",
        help="what a user's connection may subscribe to: all (default, as the guide shows "
        "everyone everything) or team (its own team only); observer tokens may watch all",
    )
    cluster = parser.add_argument_group(
        "cluster (several processes sharing presence; docs/cluster.md)"
    )
    cluster.add_argument(
        "--redis",
        metavar="URL",
        help="join a cluster through this Redis: redis://[:PASSWORD@]HOST:PORT/DB, or rediss:// "
        "for TLS (default $PRESENCE_REDIS_URL; unset: this process works alone)",
    )
    cluster.add_argument(
        "--node-id",
        metavar="ID",
        help="this node's name in the cluster, unique (default HOST:PORT); session ids begin "
        "with it, other characters than A-Z a-z 0-9 _ - replaced by _",
    )
    cluster.add_argument(
        "--node-timeout",
        type=float,
        default=DEFAULT_NODE_TIMEOUT,
        metavar="S",
        help="a node that gives no sign of life this long is taken as dead: its users "
        "go offline (reason node_down) unless connected elsewhere (default 15)",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default=None,
        help="the event loop: uvloop (default where it is installed: lower latency under "
        "load, docs/server.md) or asyncio (Python's own)",
    )
    parser.add_argument(
        "--no-db", action="store_true", help="keep presence in memory only; write nothing"
    )
    add_database_arguments(parser)


LOOPS = ("asyncio", "uvloop")


def loop_factory(choice: str | None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory ``--loop`` asks for (None: asyncio's own).

    uvloop, the default, does the connection machinery (reading, writing, timers)
    in C, which lowers latency under load (the 2,000-user version-2 shift start,
    bench/bench_server_v2.py; figures in docs/server.md). It is a dependency
    wherever it builds (requirements.txt: not on Windows); where it cannot be
    imported, the default (``choice`` None) falls back to asyncio's loop with one
    line on stderr, while an explicit ``--loop uvloop`` is an error. The connection
    guard applies under both: the server accepts connections itself
    (:class:`~presence_core.server.guard.Acceptor`), not through the loop's server."""
    if choice == "asyncio":
        return None
    if importlib.util.find_spec("uvloop") is None:
        if choice is None:
            print(
                "presence: uvloop is not installed (pip install uvloop): serving on "
                "asyncio's event loop, with more latency under load",
                file=sys.stderr,
            )
            return None
        raise PresenceError("--loop uvloop: uvloop is not installed (pip install uvloop)")
    import uvloop

    return uvloop.new_event_loop


def run_server(main: Coroutine, factory: Callable[[], asyncio.AbstractEventLoop] | None) -> None:
    """Run ``main`` to its end on a fresh loop made by ``factory`` (None: asyncio's)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def tune_gc() -> None:
    """Make Python's cyclic garbage collector cheap for a server that allocates a lot.

    Every connection and every message allocate many short-lived containers (tasks,
    futures, dicts); with the default thresholds the collector runs every 700 of
    them and, each time, walks what survived: in a 2,000-user shift start
    (bench/bench_server_v2.py) that was about a sixth of the server's CPU. So: what
    exists at start-up (modules, classes, the server) is frozen out of every
    collection, and the youngest generation is collected every 50,000 allocations.
    Cycles are still collected, later; a connection's garbage is mostly freed by
    reference counting, not by the collector."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _origins(text: str) -> str | list[str]:
    text = text.strip()
    if text == "*":
        return "*"
    return [o.strip().rstrip("/") for o in text.split(",") if o.strip()]


def _check(args: argparse.Namespace) -> None:
    """User mistakes in the flags, as one line each."""
    if not 0 <= args.port <= 65535:
        raise PresenceError(f"--port {args.port} is not a port: use 0 to 65535")
    if args.grace < 0 or args.heartbeat_timeout < 0:
        raise PresenceError("--grace and --heartbeat-timeout cannot be negative")
    if args.header_timeout <= 0 or args.idle_timeout <= 0:
        raise PresenceError("--header-timeout and --idle-timeout must be positive")
    if not 0.01 <= args.diff_interval <= 60:
        raise PresenceError("--diff-interval must be between 0.01 and 60 seconds")
    if args.max_connections is not None and args.max_connections < 1:
        raise PresenceError("--max-connections must be at least 1")
    if args.max_per_address is not None and args.max_per_address < 0:
        raise PresenceError("--max-per-address cannot be negative (0 = no cap)")
    if not 1 <= args.node_timeout <= 3600:
        raise PresenceError("--node-timeout must be between 1 and 3600 seconds")
    if args.node_id is not None and not args.node_id.strip():
        raise PresenceError("--node-id cannot be empty")


def run(args: argparse.Namespace) -> int:
    from presence_core.config import load_settings

    _check(args)
    factory = loop_factory(args.loop)
    if args.auth_secret:
        warn_secret_on_command_line(
            "--auth-secret", f"--auth-secret-file PATH or {auth.SECRET_ENV}"
        )
    settings = load_settings(
        database_url=args.database_url,
        home=args.home,
        auth_secret=args.auth_secret,
        auth_secret_file=args.auth_secret_file,
        redis_url=args.redis,
    )
    if settings.redis_url is not None and not settings.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise PresenceError("--redis must be a redis://, rediss:// or unix:// URL")
    options = ServerOptions(
        cors_origins=_origins(args.cors_origins),
        grace=args.grace,
        heartbeat_timeout=args.heartbeat_timeout,
        auth_secret=settings.auth_secret,
        max_connections=args.max_connections,
        max_per_address=args.max_per_address,
        header_timeout=args.header_timeout,
        idle_timeout=args.idle_timeout,
        diff_interval=args.diff_interval,
        watch_policy=args.watch_policy,
        redis_url=settings.redis_url,
        node_id=args.node_id.strip() if args.node_id else None,
        node_timeout=args.node_timeout,
    )
    engine = None
    if not args.no_db:
        from presence_core.database import engine as db

        engine = db.connect(settings)
    server = PresenceServer(engine, options)
    tune_gc()
    try:
        run_server(server.serve(args.host, args.port), factory)
    finally:
        if engine is not None:
            engine.dispose()
    return 0
