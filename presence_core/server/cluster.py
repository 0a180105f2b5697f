"""One node of a presence cluster: :class:`Cluster` puts the parts together.

Several ``presence serve --redis URL`` processes share presence through Redis
(docs/cluster.md): :mod:`.cluster_link` (the client, the scripts, whether Redis
answers), :mod:`.cluster_state` (the mirror the server reads and the changes it
makes), :mod:`.cluster_liveness` (heartbeat, reaping, replaying the outbox),
:mod:`.cluster_stream` (transitions to this node's clients) and, with a database,
:mod:`.cluster_recorder` (each transition written once). The server builds one when
``ServerOptions.redis_url`` is set, and uses ``cluster.state`` as its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from presence_core.server.cluster_link import ClusterLink
from presence_core.server.cluster_liveness import ClusterLiveness
from presence_core.server.cluster_recorder import ClusterRecorder
from presence_core.server.cluster_state import ClusterState, to_ms
from presence_core.server.cluster_stream import ClusterStream
from presence_core.server.options import ServerOptions
from presence_core.server.state import User
from presence_core.server.writer import DatabaseWriter

log = logging.getLogger(__name__)

__all__ = ["Cluster"]


class Cluster:
    """The cluster side of one server process.

    ``node_id()``: the node's id (known once listening); ``now()``: the node's clock
    (the database's, to the ms); ``publish``: the server's fan-out of a transition;
    ``jump()``: after a re-snapshot, every version-2 watcher's ``seq`` skips one.
    """

    def __init__(
        self,
        options: ServerOptions,
        node_id: Callable[[], str],
        now: Callable[[], datetime],
        publish: Callable[[User, str, datetime, str], Awaitable[None]],
        writer: DatabaseWriter | None,
        jump: Callable[[], Awaitable[None]],
    ) -> None:
        assert options.redis_url is not None
        self.options = options
        self.link = ClusterLink(
            options.redis_url,
            node_id,
            lambda: to_ms(now()),
            timeout=options.redis_timeout,
            maxlen=options.stream_maxlen,
        )
        self.state = ClusterState(
            self.link,
            publish,
            writer,
            now=now,
            settle_after=options.node_timeout,
            source=options.source,
        )
        self.liveness = ClusterLiveness(self.link, self.state, options.node_timeout)
        self.stream = ClusterStream(self.link, self.state, jump)
        self.recorder = (
            ClusterRecorder(
                self.link,
                writer,
                source=options.source,
                now=now,
                claim_idle=2 * options.node_timeout,
            )
            if writer is not None
            else None
        )
        if self.recorder is not None:  # a reaped node's unwritten entries, at once
            self.liveness.on_reaped = self.recorder.claim_from
        self._tasks: list[asyncio.Task] = []

    async def start(self, wait: float = 3.0) -> None:
        """Start the node's loops; wait up to ``wait`` seconds for it to register (a
        node whose Redis does not answer yet keeps trying, its changes waiting)."""
        self._tasks.append(asyncio.create_task(self.liveness.run()))
        self._tasks.append(asyncio.create_task(self.stream.run()))
        if self.recorder is not None:
            self._tasks.append(asyncio.create_task(self.recorder.run()))
        try:
            async with asyncio.timeout(wait):
                await self.liveness.registered.wait()
                await self.stream.ready.wait()  # no transition made before goes untold
        except TimeoutError:
            log.warning(
                "cluster: Redis did not answer within %ss; serving anyway, registering "
                "when it does",
                wait,
            )

    async def stop(self) -> None:
        """Stop the loops (the node stays registered: if it does not come back, the
        others reap it after the node timeout, and its users who reconnected
        elsewhere stay online)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.state.stop()
        await self.link.close()

    def health(self) -> dict:
        link = self.link
        return {
            "node": link.node,
            "epoch": link.epoch,
            "ready": self.stream.ready.is_set(),
            "redis": link.reachable,
            "redis_unreachable_since": (
                link.unreachable_since.isoformat() if link.unreachable_since else None
            ),
            "redis_error": None if link.reachable else link.last_error,
            "nodes_alive": self.liveness.nodes_alive,
            "outbox": len(self.state.outbox),
            "outbox_dropped": self.state.outbox.dropped,
            "stream_lag_ms": self.stream.lag_ms,
            "stream_delivered": self.stream.delivered,
            "resnapshots": self.stream.resnapshots,
            "reaped_nodes": self.liveness.reaped_nodes,
            "recoveries": dict(self.state.recoveries),
            "script_calls": link.scripts.calls,
            "unacked_writes": self.recorder.pending() if self.recorder else 0,
        }
