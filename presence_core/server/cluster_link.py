"""A node's line to Redis: the client, the scripts, the epoch, and whether Redis answers.

:class:`ClusterLink` runs a node script with the node's id, the epoch it knows and the
time, and turns every way Redis can fail to answer (refused, reset, timed out, loading)
into :class:`RedisUnavailable`, remembering since when Redis has not answered (for
/health) and since when it has answered without a break (a node reaps others only
after it has itself been in touch for a whole node timeout: after an outage every
node's last sign of life is old, and the first one back must not reap the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from presence_core.server.cluster_scripts import ClusterScripts

__all__ = ["BLOCK_MS", "ClusterLink", "RedisUnavailable", "UNREACHABLE", "stop_if_cancelled"]

BLOCK_MS = 1000  # how long a stream read waits for new entries
POOL = 32  # connections for script calls, per node

UNREACHABLE = (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, OSError)


class RedisUnavailable(Exception):
    """Redis did not answer (the message says how)."""


def stop_if_cancelled() -> None:
    """Raise CancelledError in a task being cancelled: redis-py may turn a cancellation
    that lands inside a read into an exception of its own, which a loop that carries on
    after Redis errors would otherwise swallow, and never stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ClusterLink:
    """One node's Redis client and scripts.

    ``url``: ``redis://``, ``rediss://`` (TLS) or ``unix://``, with a password if any;
    ``node_id()`` the node's id (known once listening); ``now_ms()`` the time by the
    node's clock (the database's) in ms; ``timeout``: seconds a call may take before
    Redis counts as unreachable; ``maxlen``: the stream's approximate cap.
    """

    def __init__(
        self,
        url: str,
        node_id: Callable[[], str],
        now_ms: Callable[[], int],
        *,
        timeout: float = 2.0,
        maxlen: int = 200_000,
    ) -> None:
        # at most POOL connections: a login storm waits for a free one instead of
        # opening a connection per client (and never fails for being many)
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL,
            timeout=max(10.0, 4 * timeout),
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),  # one retry: a connection a restarted Redis reset
            health_check_interval=0,
        )
        self.client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        # blocking reads (XREAD BLOCK 1 s) on connections of their own, allowed the
        # block on top of the timeout
        self.blocking: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout + BLOCK_MS / 1000,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.scripts = ClusterScripts(self.client, maxlen)
        self.node_id = node_id
        self.now_ms = now_ms
        self.timeout = timeout
        self.epoch: str | None = None  # None until registered
        self.generation = 0  # bumped at each re-registration (reaped, epoch)
        self.reachable = False
        self.unreachable_since: datetime | None = None
        self.last_error: str | None = None
        self.last_good_ms: int | None = None  # the last time a call succeeded
        self._up_since: float | None = None  # monotonic: answering without a break since

    @property
    def node(self) -> str:
        return self.node_id()

    def healthy_for(self) -> float:
        """Seconds Redis has answered without a break (0 when it does not)."""
        return 0.0 if self._up_since is None else time.monotonic() - self._up_since

    def up(self) -> None:
        if not self.reachable:
            self.reachable = True
            self.unreachable_since = None
            self._up_since = time.monotonic()
        self.last_good_ms = self.now_ms()

    def down(self, exc: BaseException) -> None:
        if self.reachable or self.unreachable_since is None:
            self.unreachable_since = datetime.now(UTC)
        self.reachable = False
        self._up_since = None
        self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"

    async def guarded(self, coro):
        """Await ``coro`` (a Redis call); RedisUnavailable when Redis does not answer."""
        try:
            result = await coro
        except UNREACHABLE as exc:
            self.down(exc)
            raise RedisUnavailable(str(exc)) from exc
        self.up()
        return result

    async def register(self, *, fresh: bool) -> dict:
        """Register this node (creating the epoch if Redis has none); the epoch known
        from now on is the one Redis has."""
        candidate = secrets.token_hex(8)
        answer = await self.guarded(
            self.scripts.register(self.node, self.now_ms(), candidate, fresh=fresh)
        )
        self.epoch = answer["epoch"]
        self.generation += 1
        return answer

    async def run(self, name: str, *args: object, at: int | None = None) -> dict:
        """Run the node script ``name`` for this node at ``at`` (default now)."""
        if self.epoch is None:
            raise RedisUnavailable("not registered yet")
        method = getattr(self.scripts, name)
        return await self.guarded(
            method(self.epoch, self.node, self.now_ms() if at is None else at, *args)
        )

    async def close(self) -> None:
        for client in (self.client, self.blocking):
            with contextlib.suppress(Exception):  # closing a client to a Redis that is gone
                await client.aclose()
                await client.connection_pool.disconnect()
