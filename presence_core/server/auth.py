"""Signed tokens for the presence server (``presence token`` prints them).

A token speaks for a user or for a read-only observer (the listener, dashboards),
signed with the server's secret.

A token is ``<claims>.<signature>``: the claims are JSON, base64url-encoded
without padding; the signature is HMAC-SHA256 of the encoded claims under the
shared secret, base64url too. Claims: ``sub`` (the user id, as text) or
``role: "observer"``, and ``exp`` (expiry, Unix seconds). A client presents it
in the Socket.IO ``auth`` payload: ``io(url, {auth: {token}})``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import math
import re
import time
from dataclasses import dataclass

from presence_core.errors import PresenceError
from presence_core.protocol import user_id_text

SECRET_ENV = "PRESENCE_AUTH_SECRET"
OBSERVER = "observer"
DEFAULT_TTL = 24 * 3600
MAX_TOKEN = 4096


class TokenError(PresenceError):
    """A token that is malformed, forged or expired (the message says which)."""


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for: a user (``user_id`` as text) or an observer."""

    user_id: str | None
    observer: bool
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, body: str) -> str:
    return _b64(hmac.new(secret.encode(), body.encode("ascii"), hashlib.sha256).digest())


def check_secret(secret: str | None) -> str:
    """The secret, refused when empty or shorter than 16 characters."""
    if not secret or len(secret) < 16:
        raise PresenceError(
            f"the auth secret must be at least 16 characters (see --auth-secret-file, {SECRET_ENV})"
        )
    return secret


def issue_token(
    secret: str,
    user_id: int | str | None = None,
    *,
    observer: bool = False,
    ttl: float = DEFAULT_TTL,
    now: float | None = None,
) -> str:
    """A token for ``user_id``, or for an observer when ``observer`` is true.

    Raises PresenceError for a short secret, a bad user id, or neither/both given.
    """
    check_secret(secret)
    if observer == (user_id is not None):
        raise PresenceError("a token is either for a user (--user ID) or for an --observer")
    if ttl <= 0:
        raise PresenceError("a token's lifetime must be positive")
    exp = math.ceil((time.time() if now is None else now) + ttl)  # never sooner than asked
    if observer:
        claims: dict = {"role": OBSERVER, "exp": exp}
    else:
        try:
            claims = {"sub": user_id_text(user_id), "exp": exp}
        except ValueError as exc:
            raise PresenceError(f"bad user id: {exc}") from None
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{body}.{_sign(secret, body)}"


def verify_token(token: object, secret: str, *, now: float | None = None) -> Identity:
    """Check a token's signature and expiry and say whom it speaks for.

    Raises TokenError (never anything else) for anything that is not a valid,
    current token signed with ``secret``.
    """
    if not isinstance(token, str) or not token:
        raise TokenError("no token: pass {token} in the Socket.IO auth payload")
    if len(token) > MAX_TOKEN or token.count(".") != 1:
        raise TokenError("malformed token")
    body, signature = token.split(".")
    if not hmac.compare_digest(_sign(secret, body), signature):
        raise TokenError("bad token signature")
    try:
        claims = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError):
        raise TokenError("malformed token") from None
    if not isinstance(claims, dict):
        raise TokenError("malformed token")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise TokenError("token has no expiry")
    if exp <= (time.time() if now is None else now):
        raise TokenError("token expired")
    if claims.get("role") == OBSERVER:
        return Identity(user_id=None, observer=True, expires_at=float(exp))
    sub = claims.get("sub")
    try:
        return Identity(user_id=user_id_text(sub), observer=False, expires_at=float(exp))
    except ValueError:
        raise TokenError("token names no user") from None


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` → seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 15m, 12h, 7d)")
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * factor
