"""Signed tokens and the `presence token` command."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import pytest

from presence_core import auth
from presence_core.errors import PresenceError

SECRET = "a-secret-of-enough-length"


def test_user_token_round_trip():
    token = auth.issue_token(SECRET, 123)
    identity = auth.verify_token(token, SECRET)
    assert identity.user_id == "123" and not identity.observer
    assert identity.expires_at > time.time() + 3600


def test_observer_token():
    identity = auth.verify_token(auth.issue_token(SECRET, observer=True), SECRET)
    assert identity.observer and identity.user_id is None


def test_expired_forged_and_malformed_tokens_are_refused():
    expired = auth.issue_token(SECRET, "u", ttl=10, now=time.time() - 11)
    with pytest.raises(auth.TokenError, match="expired"):
        auth.verify_token(expired, SECRET)
    with pytest.raises(auth.TokenError, match="signature"):
        auth.verify_token(auth.issue_token(SECRET, "u"), SECRET + "x")
    body, signature = auth.issue_token(SECRET, "u").split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(auth.TokenError, match="signature"):
        auth.verify_token(f"{forged}.{signature}", SECRET)
    for bad in (None, "", 5, "abc", "a.b.c", "x" * 5000, {"token": "a.b"}):
        with pytest.raises(auth.TokenError):
            auth.verify_token(bad, SECRET)


def test_issue_refuses_nonsense():
    with pytest.raises(PresenceError, match="16"):
        auth.issue_token("short", "u")
    with pytest.raises(PresenceError):
        auth.issue_token(SECRET)  # neither user nor observer
    with pytest.raises(PresenceError):
        auth.issue_token(SECRET, "u", observer=True)
    with pytest.raises(PresenceError):
        auth.issue_token(SECRET, "")


def test_parse_duration():
    assert auth.parse_duration("90") == 90
    assert auth.parse_duration("15m") == 900
    assert auth.parse_duration("2h") == 7200
    assert auth.parse_duration("7d") == 7 * 86400


def _presence(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    return subprocess.run(
        [sys.executable, "-m", "presence_core", *args],
        env={**base, "PYTHONPATH": os.getcwd(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_command():
    done = _presence("token", "--user", "42", "--ttl", "1h", env={auth.SECRET_ENV: SECRET})
    assert done.returncode == 0, done.stderr
    identity = auth.verify_token(done.stdout.strip(), SECRET)
    assert identity.user_id == "42" and identity.expires_at <= time.time() + 3601
    observer = _presence("token", "--observer", "--secret", SECRET)
    assert auth.verify_token(observer.stdout.strip(), SECRET).observer


def test_token_command_without_secret_is_one_line_error():
    done = _presence("token", "--user", "1")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("presence: error:") and "Traceback" not in done.stderr
