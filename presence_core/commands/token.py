"""Signed tokens for the presence server, and the `presence token` command.

Print a token for a user or for a read-only observer (the listener, dashboards),
signed with the server's secret (--secret or PRESENCE_AUTH_SECRET).

A token is ``<claims>.<signature>``: the claims are JSON, base64url-encoded
without padding; the signature is HMAC-SHA256 of the encoded claims under the
shared secret, base64url too. Claims: ``sub`` (the user id, as text) or
``role: "observer"``, and ``exp`` (expiry, Unix seconds). A client presents it
in the Socket.IO ``auth`` payload: ``io(url, {auth: {token}})``.
"""

from __future__ import annotations

import argparse
import os

from presence_core.errors import PresenceError
from presence_core.server.auth import DEFAULT_TTL, SECRET_ENV, issue_token, parse_duration


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
    parser.add_argument(
        "--secret",
        metavar="SECRET",
        help=f"the server's secret (default ${SECRET_ENV}; at least 16 characters)",
    )


def run(args: argparse.Namespace) -> int:
    secret = args.secret or os.environ.get(SECRET_ENV)
    if not secret:
        raise PresenceError(f"no secret: pass --secret or set {SECRET_ENV}")
    print(issue_token(secret, args.user, observer=args.observer, ttl=args.ttl))
    return 0
