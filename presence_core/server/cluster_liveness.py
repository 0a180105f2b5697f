"""A node's heartbeat in Redis, and the reaping of nodes that lost theirs.

:class:`ClusterLiveness` runs once a second: it registers the node the first time,
renews its sign of life (``alive``), handles a "reaped" or "epoch" answer (the node
froze past the timeout, or Redis lost its data: see
:meth:`~.cluster_state.ClusterState.recover`), replays the outbox when Redis answers
again, and runs ``reap`` so that a node silent past the node timeout loses its
connections. A node reaps only after Redis has answered it without a break for a
whole node timeout: after an outage every node's last sign of life is old, and the
first node back must not take the others for dead before they could renew.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from presence_core.server.cluster_link import ClusterLink, RedisUnavailable, stop_if_cancelled
from presence_core.server.cluster_state import ClusterState

log = logging.getLogger(__name__)

__all__ = ["ClusterLiveness"]


class ClusterLiveness:
    """The liveness loop of one node; ``timeout``: the node timeout in seconds."""

    def __init__(self, link: ClusterLink, state: ClusterState, timeout: float) -> None:
        self.link, self.state, self.timeout = link, state, timeout
        self.interval = max(0.1, min(1.0, timeout / 5))
        self.nodes_alive = 0
        self.reaped_nodes = 0  # other nodes this one reaped
        self.rounds = 0  # rounds done (whether Redis answered or not)
        self.registered = asyncio.Event()
        self.on_reaped: Callable[[list[str]], None] | None = None  # the nodes this one reaped
        self._said_down = False

    async def tick(self) -> None:
        """One round: register or renew, recover, replay, reap."""
        if self.link.epoch is None:
            answer = await self.link.register(fresh=True)
            self.nodes_alive = int(answer.get("nodes") or 0)
            if answer.get("ghost"):
                log.warning(
                    "cluster: an earlier process of node %s left connections; they are "
                    "reaped as node %s after the node timeout unless their users reconnect",
                    self.link.node,
                    answer["ghost"],
                )
            log.info("cluster: node %s registered, epoch %s", self.link.node, self.link.epoch)
            self.registered.set()
            return  # the stream reader takes its position before anything else
        else:
            if self.state.unfinished is not None:  # Redis interrupted the last one
                await self.state.recover(self.state.unfinished)
            generation = self.link.generation
            answer = await self.link.run("alive", int(self.timeout * 1000))
            if answer.get("r") in ("reaped", "epoch"):
                await self.state.recover(answer["r"], generation)
            else:
                self.nodes_alive = int(answer.get("nodes") or 0)
        if self.state.outbox:
            await self.state.drain()
        if self.link.healthy_for() >= self.timeout:
            answer = await self.link.run("reap", int(self.timeout * 1000))
            if answer.get("r") == "ok" and answer.get("reaped"):
                self.reaped_nodes += len(answer["reaped"])
                if self.on_reaped is not None:
                    self.on_reaped(answer["reaped"])
                log.warning(
                    "cluster: nodes %s gave no sign of life for %ss: reaped (%s users offline)",
                    ", ".join(answer["reaped"]),
                    self.timeout,
                    answer.get("transitions"),
                )

    async def run(self) -> None:
        while True:
            stop_if_cancelled()  # (a cancellation redis-py answered as if nothing happened)
            try:
                await self.tick()
                if self._said_down:
                    log.warning("cluster: Redis answers again")
                    self._said_down = False
            except RedisUnavailable as exc:
                stop_if_cancelled()
                if not self._said_down:
                    log.warning(
                        "cluster: Redis does not answer (%s); clients stay connected, "
                        "changes wait in the outbox",
                        str(exc)[:200],
                    )
                    self._said_down = True
            except Exception:  # a bug of ours must not stop the node's heartbeat
                stop_if_cancelled()
                log.exception("cluster: liveness round failed")
            self.rounds += 1
            await asyncio.sleep(self.interval)
