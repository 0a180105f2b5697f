"""How a presence server behaves: :class:`ServerOptions` and its defaults."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4100
DEFAULT_GRACE = 5.0
DEFAULT_HEARTBEAT_TIMEOUT = 60.0
SOURCE = "server"


@dataclass
class ServerOptions:
    """How the server behaves; every duration is in seconds.

    ``grace``: how long an abruptly closed connection still counts for its user
    (0: none). ``heartbeat_timeout``: a connection that has sent ``userHeartbeat``
    at least once and then stays silent this long stops counting (0: never);
    connections that never send heartbeats (the guide's clients) are not timed out.
    ``auth_secret``: when set, every connection needs a token (see
    :mod:`presence_core.server.auth`). ``max_message_bytes``: larger messages close
    the sender's connection (engine.io's limit).
    """

    cors_origins: str | list[str] = "*"
    grace: float = DEFAULT_GRACE
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    auth_secret: str | None = None
    flush_interval: float = 0.5
    max_message_bytes: int = 1_000_000
    source: str = SOURCE
