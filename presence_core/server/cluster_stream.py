"""The stream reader: every cluster transition, in cluster order, to this node's clients.

:class:`ClusterStream` reads ``presence:events`` (XREAD BLOCK from the last entry it
delivered) and hands each entry to :meth:`~.cluster_state.ClusterState.deliver`, the
only path by which a node tells its clients of transitions, its own included: each
node delivers each transition once, in the stream's order.

Cut off from Redis, it resumes from its last entry. If the stream no longer holds that
entry's successors (trimmed past its window while the node was away), it re-snapshots
the mirror from ``presence:present`` and the user hashes, tells the guide's clients
the differences as ``userStatusChanged``, and makes each version-2 watcher's ``seq``
skip one, so they know to subscribe again. Entries carry the epoch: a stream of a
new epoch (Redis came back empty) is read from its start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.exceptions as rexc

from presence_core.server.cluster_link import (
    BLOCK_MS,
    ClusterLink,
    RedisUnavailable,
    stop_if_cancelled,
)
from presence_core.server.cluster_state import ClusterState

log = logging.getLogger(__name__)

__all__ = ["EVENTS", "ClusterStream"]

EVENTS = "presence:events"
_BATCH = 500


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class ClusterStream:
    """The reader of one node. ``jump()`` is called after a re-snapshot (the server
    skips a ``seq`` for every version-2 watcher)."""

    def __init__(
        self, link: ClusterLink, state: ClusterState, jump: Callable[[], Awaitable[None]]
    ) -> None:
        self.link, self.state, self.jump = link, state, jump
        self.last_id: str | None = None
        self.epoch: str | None = None  # of the stream being read
        self._link_epoch: str | None = None
        self.delivered = 0
        self.resnapshots = 0
        self.lag_ms = 0
        self.ready = asyncio.Event()  # positioned: the mirror loaded, the last id known

    async def snapshot(self, *, tell: bool) -> None:
        """The mirror from Redis (present users and their hashes) and the stream's last
        id, read in one transaction. The differences with the mirror go to the node's
        clients (at the first snapshot, to any client already connected: a node
        whose Redis did not answer at start serves meanwhile); ``tell``: this node
        missed entries, so every version-2 watcher's ``seq`` also skips one."""
        client = self.link.client
        async with client.pipeline(transaction=True) as pipe:
            pipe.smembers("presence:present")
            pipe.xrevrange(EVENTS, count=1)
            pipe.get("presence:epoch")
            keys, last, epoch = await self.link.guarded(pipe.execute())
        fields = ("status", "since", "last_change", "wire", "type", "name", "team")
        present: dict[str, dict] = {}
        keys = sorted(keys)
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            async with client.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.hmget(f"presence:user:{key}", fields)
                rows = await self.link.guarded(pipe.execute())
            for key, row in zip(chunk, rows, strict=True):
                present[key] = {f: v for f, v in zip(fields, row, strict=True) if v is not None}
        told = self.state.replace(present)
        self.last_id = last[0][0] if last else "0-0"
        self.epoch = epoch
        if tell:
            self.resnapshots += 1
            await self.jump()
        for user, status, moment in told:
            self.state.broadcasts += 1
            await self.state.publish(user, status, moment, "reconcile")
        if tell:
            log.warning(
                "cluster: the stream no longer held what this node missed; re-snapshot "
                "(%d differences told)",
                len(told),
            )

    async def _gap(self) -> bool:
        """Whether entries after ``last_id`` may have been trimmed away before this
        node read them (it was cut off, frozen, or just slow): the stream is trimmed
        from its head, so that is when ``last_id`` itself is gone. Checked after every
        read that returned entries (one XRANGE), whatever kept the node away."""
        if self.last_id in (None, "0-0"):
            return False
        first = await self.link.guarded(self.link.client.xrange(EVENTS, count=1))
        return bool(first) and _id(first[0][0]) > _id(self.last_id) and not await self._holds()

    async def _holds(self) -> bool:
        """Whether the entry ``last_id`` itself is still in the stream."""
        found = await self.link.guarded(
            self.link.client.xrange(EVENTS, min=self.last_id, max=self.last_id, count=1)
        )
        return bool(found)

    async def step(self) -> None:
        """One read (blocking up to a second) and its delivery."""
        if self.link.epoch is None:
            await asyncio.sleep(0.1)
            return
        if self.last_id is None:
            await self.snapshot(tell=False)
            self.ready.set()
        if self.link.epoch != self._link_epoch:
            self._link_epoch = self.link.epoch
            if self.epoch is not None and self.epoch != self.link.epoch:
                self.epoch, self.last_id = self.link.epoch, "0-0"  # a new stream
        answer = await self.link.guarded(
            self.link.blocking.xread({EVENTS: self.last_id}, count=_BATCH, block=BLOCK_MS)
        )
        entries = answer[0][1] if answer else []
        if entries and entries[0][1].get("epoch") == self.epoch and await self._gap():
            await self.snapshot(tell=True)  # (what was just read is in the snapshot)
            return
        for entry_id, fields in entries:
            epoch = fields.get("epoch")
            if self.epoch is None:
                self.epoch = epoch
            elif epoch != self.epoch:  # Redis came back empty: its stream from the start
                self.epoch, self.last_id = epoch, "0-0"
                return
            self.last_id = entry_id
            self.delivered += 1
            try:
                await self.state.deliver(fields)
            except Exception:  # a malformed entry, or a client's socket: keep reading
                log.exception("cluster: delivering stream entry %s failed", entry_id)
        if len(entries) == _BATCH:
            self.lag_ms = max(0, self.link.now_ms() - _id(entries[-1][0])[0])
        else:
            self.lag_ms = 0

    async def run(self) -> None:
        while True:
            stop_if_cancelled()  # (a cancellation redis-py answered as if nothing happened)
            try:
                await self.step()
            except RedisUnavailable:
                stop_if_cancelled()
                await asyncio.sleep(0.5)
            except rexc.ResponseError as exc:
                stop_if_cancelled()
                log.warning("cluster: stream read refused: %s", str(exc)[:200])
                await asyncio.sleep(0.5)
            except Exception:
                stop_if_cancelled()
                log.exception("cluster: stream reader failed; reading again")
                await asyncio.sleep(0.5)
