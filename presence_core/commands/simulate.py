"""A crowd of real Socket.IO clients: the synthetic organisation living through its shifts.

The people are those `presence generate-history --seed S` writes the past of (the
same user ids, names, teams and time zones), working the same day: logging in
around their team's shift in its own zone (the night desk across midnight), breaks
(`away`), calls (`busy`), lost connections that come back, extra tabs, and leaving
at the end of the day. People already at work at the start log in at once, in the
status their day has them in. The plan is fixed by --seed and --start; --speed
compresses simulated time (60: a simulated minute per second), --duration is
wall-clock seconds; --users N takes the organisation's first N people.

Works against any server speaking the guide's protocol (the extensions it uses,
``userHeartbeat``, ``userStatus`` and ``team``, are simply ignored by the guide's
own backend).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from presence_core.errors import PresenceError
from presence_core.synthetic.crowd import CrowdStats, run_crowd


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from presence_core.server.auth import SECRET_ENV, parse_duration

    parser.add_argument("--server", metavar="URL", help="default $PRESENCE_SERVER_URL")
    parser.add_argument("--users", type=int, default=50, help="how many people (default 50)")
    parser.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="simulated seconds per real second (default 60: a simulated minute per second)",
    )
    parser.add_argument(
        "--duration",
        type=parse_duration,
        default=60.0,
        metavar="S",
        help="how long to run, in real time: seconds or 10m, 2h (default 60)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="the organisation: the same people as generate-history --seed (default 1)",
    )
    parser.add_argument(
        "--start",
        metavar="ISO",
        help="the simulated clock's start, e.g. 2026-03-02T08:00Z (default now)",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=15.0,
        metavar="S",
        help="real seconds between userHeartbeat on each connection (default 15; 0 = none)",
    )
    parser.add_argument(
        "--auth-secret", metavar="SECRET", help=f"sign tokens for the crowd (default ${SECRET_ENV})"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    import os

    from presence_core.config import load_settings
    from presence_core.server.auth import SECRET_ENV
    from presence_core.status import parse_timestamp

    settings = load_settings(server_url=args.server)
    start = None
    if args.start:
        try:
            start = parse_timestamp(args.start)
        except ValueError as exc:
            raise PresenceError(f"--start: {exc}") from None

    def show(stats: CrowdStats) -> None:
        print(stats.line(), file=sys.stderr, flush=True)

    async def main() -> CrowdStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        print(
            f"simulating {args.users} users against {settings.server_url} "
            f"(speed {args.speed:g}x, {args.duration:g} s, seed {args.seed}); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        return await run_crowd(
            settings.server_url,
            args.users,
            args.speed,
            args.duration,
            args.seed,
            start=start,
            auth_secret=args.auth_secret or os.environ.get(SECRET_ENV) or None,
            heartbeat=args.heartbeat,
            progress=None if args.quiet else show,
            stop=stop,
        )

    stats = asyncio.run(main())
    print(
        f"done: {stats.connects} connections, {stats.events_sent} events sent, "
        f"{stats.drops} drops, {stats.broadcasts_received} broadcasts received, "
        f"{stats.errors_received} errors"
    )
    return 0
