"""How a presence server behaves: :class:`ServerOptions` and its defaults."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4100
DEFAULT_GRACE = 5.0
DEFAULT_HEARTBEAT_TIMEOUT = 60.0
DEFAULT_STATUS_RATE = 5.0  # status changes a second per user, on average
DEFAULT_STATUS_BURST = 20  # ... and in a row
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 5.0
DEFAULT_DIFF_INTERVAL = 0.2
DEFAULT_NODE_TIMEOUT = 15.0
DEFAULT_STREAM_MAXLEN = 200_000
WATCH_POLICIES = ("all", "team")
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

    ``status_rate``, ``status_burst``: how many status changes (coming online,
    ``userStatus``) each user may make a second on average and in a row; more get
    ``presenceError`` and change nothing (going offline is never refused).
    ``clock_interval``: how often the database's clock is measured again; times
    are decided by it (see :mod:`presence_core.database.clock`).

    Connections (see :mod:`presence_core.server.guard`): ``max_connections`` (None:
    as many as the file limit allows, less a reserve; more is lowered to that),
    ``max_per_address`` (None: half of the connection cap; 0: no cap per address);
    ``header_timeout``: a connection must deliver a complete request this soon
    after it opens; ``idle_timeout``: a kept-alive HTTP connection may wait this
    long for its next request.

    Protocol version 2: ``diff_interval``: how often each subscribed client gets
    one ``presenceDiff`` of what changed (the tick); ``watch_policy``: what a
    connection that is not an observer may watch: ``"all"`` (anything, as the
    guide shows everyone everything) or ``"team"`` (its own user's team only:
    ``subscribe`` to other teams, by id to users of other teams, or to ``all`` is
    refused, and so is ``getUsersStatus`` about them).

    Cluster (see docs/cluster.md): ``redis_url`` (None: one process alone, as ever)
    makes this process one node of a cluster sharing presence through Redis;
    ``node_id`` names it (None: ``host:port`` once listening; Engine.IO session ids
    then begin with its route tag, see :func:`~presence_core.server.cluster_routing.route_tag`);
    ``node_timeout``: a node silent this long is reaped by the others;
    ``stream_maxlen``: about how many transitions the cluster's stream keeps (how
    long a node cut off from Redis can catch up without a re-snapshot);
    ``redis_timeout``: a Redis call that takes longer counts as Redis unreachable.
    """

    cors_origins: str | list[str] = "*"
    grace: float = DEFAULT_GRACE
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    auth_secret: str | None = None
    flush_interval: float = 0.5
    max_message_bytes: int = 1_000_000
    source: str = SOURCE
    status_rate: float = DEFAULT_STATUS_RATE
    status_burst: int = DEFAULT_STATUS_BURST
    clock_interval: float = 60.0
    max_connections: int | None = None
    max_per_address: int | None = None
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    diff_interval: float = DEFAULT_DIFF_INTERVAL
    watch_policy: str = "all"
    redis_url: str | None = None
    node_id: str | None = None
    node_timeout: float = DEFAULT_NODE_TIMEOUT
    stream_maxlen: int = DEFAULT_STREAM_MAXLEN
    redis_timeout: float = 2.0
