"""Signed tokens and the `presence token` command."""

from __future__ import annotations

import base64
import json
import time

import pytest

from presence_core import cli
from presence_core.errors import PresenceError
from presence_core.server import auth

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


def test_token_command(capsys, monkeypatch):
    monkeypatch.setenv(auth.SECRET_ENV, SECRET)
    assert cli.main(["token", "--user", "42", "--ttl", "1h"]) == 0
    identity = auth.verify_token(capsys.readouterr().out.strip(), SECRET)
    assert identity.user_id == "42" and identity.expires_at <= time.time() + 3601
    monkeypatch.delenv(auth.SECRET_ENV)
    assert cli.main(["token", "--observer", "--secret", SECRET]) == 0
    assert auth.verify_token(capsys.readouterr().out.strip(), SECRET).observer


def test_token_command_without_secret_is_one_line_error(capsys, monkeypatch):
    monkeypatch.delenv(auth.SECRET_ENV, raising=False)
    assert cli.main(["token", "--user", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("presence: error:") and err.count("\n") == 1
