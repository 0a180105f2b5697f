"""Print a signed token for a user or for a read-only observer (the listener, dashboards).

The token is signed with the server's secret: ``--secret-file PATH``, or
``PRESENCE_AUTH_SECRET`` / ``PRESENCE_AUTH_SECRET_FILE``. ``--secret`` works too,
but puts the secret where every local account can read it (``ps``).
"""

from __future__ import annotations

import argparse
import sys

from presence_core.errors import PresenceError
from presence_core.server.auth import DEFAULT_TTL, SECRET_ENV, issue_token, parse_duration


def warn_secret_on_command_line(flag: str, instead: str) -> None:
    """One line on stderr: a secret given as ``flag`` is visible to every local account."""
    print(
        f"presence: warning: {flag} puts a secret on the command line, where every local "
        f"account can read it (ps); use {instead}",
        file=sys.stderr,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID", help="the user id the token speaks for")
    who.add_argument(
        "--observer",
        action="store_true",
        help="a read-only token (listener, dashboards): may watch, may not announce anyone",
    )
    parser.add_argument(
        "--ttl",
        type=parse_duration,
        default=float(DEFAULT_TTL),
        metavar="DURATION",
        help="how long the token is valid: seconds or 15m, 12h, 7d (default 1d)",
    )
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "--secret-file",
        metavar="PATH",
        help=f"the file holding the server's secret (default ${SECRET_ENV}, ${SECRET_ENV}_FILE)",
    )
    secret.add_argument(
        "--secret",
        metavar="SECRET",
        help="the server's secret itself (visible to every local account: prefer --secret-file)",
    )


def run(args: argparse.Namespace) -> int:
    from presence_core.config import load_settings

    if args.secret:
        warn_secret_on_command_line("--secret", f"--secret-file PATH or {SECRET_ENV}")
    settings = load_settings(auth_secret=args.secret, auth_secret_file=args.secret_file)
    if not settings.auth_secret:
        raise PresenceError(f"no secret: pass --secret-file PATH or set {SECRET_ENV}")
    print(issue_token(settings.auth_secret, args.user, observer=args.observer, ttl=args.ttl))
    return 0
