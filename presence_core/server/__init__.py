"""The presence server: the guide's Socket.IO protocol over uvicorn, with /health.

``PresenceServer(engine_or_None, ServerOptions(...))``; ``await server.start(host, port)``
then ``await server.stop()``, or ``await server.serve(host, port)`` until a signal.
Tokens: :func:`issue_token` / :func:`verify_token` (module :mod:`.auth`). Several
processes sharing presence through Redis: ``ServerOptions(redis_url=...)``
(:mod:`.cluster`, docs/cluster.md).
"""

from presence_core.server.auth import Identity, TokenError, issue_token, verify_token
from presence_core.server.options import (
    DEFAULT_DIFF_INTERVAL,
    DEFAULT_GRACE,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_NODE_TIMEOUT,
    DEFAULT_PORT,
    WATCH_POLICIES,
    ServerOptions,
)
from presence_core.server.server import PresenceServer

__all__ = [
    "DEFAULT_DIFF_INTERVAL",
    "DEFAULT_GRACE",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_HEARTBEAT_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_NODE_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Identity",
    "PresenceServer",
    "ServerOptions",
    "TokenError",
    "WATCH_POLICIES",
    "issue_token",
    "verify_token",
]
