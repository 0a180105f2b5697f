"""Configuration: environment variables, validated, with command-line overrides.

Every setting has one place it is read from (``PRESENCE_*`` variables, see
DESIGN "Configuration"); command-line flags override them by passing keyword
arguments to :func:`load_settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from presence_core.errors import PresenceError

DEFAULT_HOME = Path("~/.local/share/presence-analytics")
DEFAULT_SERVER_URL = "http://127.0.0.1:4100"
DEFAULT_AVAILABLE_STATUSES = ("online",)


class ConfigError(PresenceError):
    """A setting has a value the product cannot use."""


@dataclass(frozen=True)
class Settings:
    """The product's settings after validation.

    ``database_url`` is None when the embedded PostgreSQL under ``home`` is used.
    """

    database_url: URL | None
    home: Path
    server_url: str
    tz: ZoneInfo
    available_statuses: tuple[str, ...] = field(default=DEFAULT_AVAILABLE_STATUSES)
    db_port: int | None = None  # the embedded database's port, when one is insisted on
    auth_secret: str | None = field(default=None, repr=False)  # the server's token secret
    token: str | None = field(default=None, repr=False)  # the token a client presents
    redis_url: str | None = field(default=None, repr=False)
    read_database_url: URL | None = None  # a streaming replica for reads, when set
    retention_months: int | None = None  # `presence prune` keeps this many months before now

    @property
    def embedded(self) -> bool:
        return self.database_url is None


def parse_database_url(value: str) -> URL:
    """Parse and check a PostgreSQL URL, returning one that uses psycopg 3.

    ``postgres://`` and ``postgresql://`` are accepted and given the psycopg
    driver; any other database or driver is a :class:`ConfigError`.
    """
    text = value.strip()
    if not text:
        raise ConfigError("PRESENCE_DATABASE_URL is empty; unset it to use the embedded database")
    try:
        url = make_url(text)
    except ArgumentError:
        raise ConfigError(
            f"not a database URL: {_redact(text)!r} "
            "(expected postgresql+psycopg://user:password@host:port/dbname)"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in ("postgresql", "postgres"):
        raise ConfigError(
            f"unsupported database {backend!r} in {_redact(text)!r}: presence needs PostgreSQL "
            "(postgresql+psycopg://…)"
        )
    if driver not in ("", "psycopg"):
        raise ConfigError(
            f"unsupported driver {driver!r} in {_redact(text)!r}: use postgresql+psycopg://…"
        )
    if not url.database:
        raise ConfigError(f"database URL {_redact(text)!r} names no database")
    return url.set(drivername="postgresql+psycopg")


def parse_server_url(value: str) -> str:
    """Check a Socket.IO server URL (http or https, with a host)."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"not a server URL: {value!r} (expected http://host:port)")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"bad port in server URL {value!r}") from None
    return value.strip().rstrip("/")


def parse_timezone(value: str) -> ZoneInfo:
    """Return the named IANA time zone or raise :class:`ConfigError`."""
    try:
        return ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown time zone {value!r} (expected a name such as Europe/Berlin)"
        ) from None


def parse_statuses(value: str) -> tuple[str, ...]:
    """Parse a comma-separated list of status names."""
    statuses = tuple(s.strip() for s in value.split(",") if s.strip())
    if not statuses:
        raise ConfigError("the list of available statuses is empty")
    if "offline" in statuses:
        raise ConfigError("'offline' cannot count as available")
    return statuses


def parse_port(value: str, name: str) -> int:
    """A TCP port number, or :class:`ConfigError` naming the setting."""
    try:
        port = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name}={port} is out of range 1–65535")
    return port


def parse_retention(value: str) -> int:
    """``PRESENCE_RETENTION_MONTHS``: whole months of raw transitions kept before the
    current one (at least 1)."""
    try:
        months = int(str(value).strip())
    except ValueError:
        raise ConfigError(
            f"PRESENCE_RETENTION_MONTHS={value!r} is not a whole number of months"
        ) from None
    if months < 1:
        raise ConfigError(f"PRESENCE_RETENTION_MONTHS={months} must be at least 1")
    return months


def read_secret_file(path: str | Path, what: str) -> str:
    """The secret kept in a file (first line, surrounding blanks removed).

    Secrets belong in files or variables, never on a command line, where every
    local account can read them with ``ps``.
    """
    file = Path(path).expanduser()
    try:
        content = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} file {file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} file {file}: cannot read: {exc}") from None
    secret = content.strip().splitlines()[0].strip() if content.strip() else ""
    if not secret:
        raise ConfigError(f"{what} file {file} is empty")
    return secret


def _secret(
    env: Mapping[str, str], value: str | None, file: str | None, variable: str, what: str
) -> str | None:
    """A flag's value, else the flag's file, else VARIABLE, else VARIABLE_FILE."""
    if value:
        return value
    if file:
        return read_secret_file(file, what)
    if env.get(variable):
        return env[variable]
    if env.get(f"{variable}_FILE"):
        return read_secret_file(env[f"{variable}_FILE"], what)
    return None


def display_timezone(env: Mapping[str, str] | None = None) -> ZoneInfo:
    """The display time zone when the viewer's gives none: ``PRESENCE_TZ``, else UTC."""
    env = os.environ if env is None else env
    return parse_timezone(env.get("PRESENCE_TZ") or "UTC")


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    database_url: str | None = None,
    home: str | Path | None = None,
    server_url: str | None = None,
    tz: str | None = None,
    available_statuses: str | None = None,
    auth_secret: str | None = None,
    auth_secret_file: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    redis_url: str | None = None,
    read_database_url: str | None = None,
) -> Settings:
    """Read ``PRESENCE_*`` variables from ``env`` (default ``os.environ``).

    Keyword arguments are command-line flags: when not None they win over the
    environment. Secrets come from a flag, the flag's file, ``PRESENCE_X`` or
    ``PRESENCE_X_FILE``, in that order. Raises :class:`ConfigError` with a
    one-line message.
    """
    env = os.environ if env is None else env
    url_text = database_url if database_url is not None else env.get("PRESENCE_DATABASE_URL")
    home_text = home if home is not None else env.get("PRESENCE_HOME") or DEFAULT_HOME
    port_text = env.get("PRESENCE_DB_PORT")
    read_text = read_database_url or env.get("PRESENCE_READ_DATABASE_URL")
    retention_text = env.get("PRESENCE_RETENTION_MONTHS")
    return Settings(
        db_port=parse_port(port_text, "PRESENCE_DB_PORT") if port_text else None,
        auth_secret=_secret(
            env, auth_secret, auth_secret_file, "PRESENCE_AUTH_SECRET", "auth secret"
        ),
        token=_secret(env, token, token_file, "PRESENCE_TOKEN", "token"),
        redis_url=(redis_url or env.get("PRESENCE_REDIS_URL") or None),
        read_database_url=parse_database_url(read_text) if read_text else None,
        retention_months=parse_retention(retention_text) if retention_text else None,
        database_url=parse_database_url(url_text) if url_text is not None else None,
        home=Path(home_text).expanduser().absolute(),
        server_url=parse_server_url(
            server_url or env.get("PRESENCE_SERVER_URL") or DEFAULT_SERVER_URL
        ),
        tz=parse_timezone(tz or env.get("PRESENCE_TZ") or "UTC"),
        available_statuses=parse_statuses(
            available_statuses or env.get("PRESENCE_AVAILABLE_STATUSES") or "online"
        ),
    )


def _redact(url: str) -> str:
    """Hide a password in a URL-like string for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url
