"""The cluster's history, written once: the stream's consumer group ``writers``.

Each node with a database runs a :class:`ClusterRecorder`: it reads new stream
entries with XREADGROUP (consumer = the node id), hands each transition to its
:class:`~presence_core.server.writer.DatabaseWriter`, and XACKs an entry only once
the database has committed its row (the writer's ``on_committed``). Entries a node
took and never acknowledged (it died, or its database was down and the rows went to
its spool) are claimed again by a live node after ``claim_idle`` seconds (XAUTOCLAIM)
and written again: at least once, and the table's unique key (user_id, occurred_at,
status) makes the second write a no-op, as it makes a listener logging the same
broadcasts harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

import redis.exceptions as rexc

from presence_core.database import storage
from presence_core.server.cluster_link import (
    BLOCK_MS,
    ClusterLink,
    RedisUnavailable,
    stop_if_cancelled,
)
from presence_core.server.cluster_state import from_ms
from presence_core.server.cluster_stream import EVENTS
from presence_core.server.writer import DatabaseWriter

log = logging.getLogger(__name__)

__all__ = ["GROUP", "ClusterRecorder"]

GROUP = "writers"
_BATCH = 500
MAX_WAITING = 20_000  # transitions handed to the writer and not committed, at most


class ClusterRecorder:
    """One node's member of the ``writers`` group. ``source``: the rows' source
    column; ``now()``: received_at (the database's clock); ``claim_idle``: seconds
    after which another member's unacknowledged entries are taken over."""

    def __init__(
        self,
        link: ClusterLink,
        writer: DatabaseWriter,
        *,
        source: str,
        now: Callable[[], datetime],
        claim_idle: float,
    ) -> None:
        self.link, self.writer, self.source, self.now = link, writer, source, now
        self.claim_idle = claim_idle
        self.handed = 0  # entries handed to the writer
        self.acked = 0
        self.claimed = 0
        self.claimed_from_dead = 0  # of which at once, from reaped nodes
        self._waiting: dict[int, tuple[str, storage.Transition]] = {}  # id(row) -> entry
        self._by_entry: dict[str, int] = {}  # entry id -> id(row) waiting for it
        self._to_ack: list[str] = []
        self._ack_ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._group_epoch: str | None = None
        self._next_claim = 0.0
        self._own_pending = True  # at start: what an earlier process of this id took
        self._dead: list[str] = []  # consumers of reaped nodes, to claim from at once
        writer.on_committed = self._committed

    def pending(self) -> int:
        """Entries handed to the writer and not acknowledged yet."""
        return len(self._waiting) + len(self._to_ack)

    # --- the writer's thread tells what it committed ------------------------------------

    def _committed(self, records: Sequence[object]) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._take_committed, list(records))

    def _take_committed(self, records: list[object]) -> None:
        for record in records:
            held = self._waiting.pop(id(record), None)
            if held is not None and held[1] is record:
                self._by_entry.pop(held[0], None)
                self._to_ack.append(held[0])
        if self._to_ack:
            self._ack_ready.set()

    # --- reading ------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        if self._group_epoch == self.link.epoch:
            return
        try:
            await self.link.guarded(
                self.link.client.xgroup_create(EVENTS, GROUP, id="0", mkstream=True)
            )
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_epoch = self.link.epoch

    def _hand(self, entries: list) -> None:
        for entry_id, fields in entries:
            if not fields:  # deleted under us (trimmed): nothing to write
                self._to_ack.append(entry_id)
                continue
            try:
                row = storage.Transition(
                    user_id=fields["user"],
                    status=fields["status"],
                    occurred_at=from_ms(fields["at"]),
                    received_at=self.now(),
                    inferred=fields.get("inferred") == "1",
                    reason=fields.get("reason") or None,
                    source=self.source,
                    user_type=fields.get("type"),
                    user_name=fields.get("name"),
                    team=fields.get("team"),
                )
            except (KeyError, ValueError) as exc:
                log.warning("cluster: stream entry %s is not a transition (%s)", entry_id, exc)
                self._to_ack.append(entry_id)
                continue
            older = self._by_entry.pop(entry_id, None)  # claimed again: spooled, say
            if older is not None:
                self._waiting.pop(older, None)
            self._waiting[id(row)] = (entry_id, row)
            self._by_entry[entry_id] = id(row)
            self.writer.add_transition(row)
            self.handed += 1

    async def _ack(self) -> None:
        if not self._to_ack:
            return
        ids, self._to_ack = self._to_ack, []
        try:
            await self.link.guarded(self.link.client.xack(EVENTS, GROUP, *ids))
        except RedisUnavailable:
            self._to_ack = ids + self._to_ack
            raise
        self.acked += len(ids)

    def claim_from(self, nodes: list[str]) -> None:
        """``nodes`` were reaped: what their writers took and did not acknowledge is
        claimed now, without waiting for it to be idle long enough."""
        self._dead.extend(nodes)

    async def _claim_dead(self) -> None:
        while self._dead:
            node = self._dead[0]
            consumer = node.split("~", 1)[0]  # a ghost's entries are its process's
            pending = await self.link.guarded(
                self.link.client.xpending_range(
                    EVENTS, GROUP, min="-", max="+", count=_BATCH, consumername=consumer
                )
            )
            ids = [p["message_id"] for p in pending]
            if ids:
                claimed = await self.link.guarded(
                    self.link.client.xclaim(EVENTS, GROUP, self.link.node, 0, ids)
                )
                self.claimed += len(claimed)
                self.claimed_from_dead += len(claimed)
                self._hand([e for e in claimed if e[1] is not None])
            if len(ids) < _BATCH or consumer == self.link.node:
                self._dead.pop(0)

    async def step(self) -> None:
        if self.link.epoch is None:
            await asyncio.sleep(0.1)
            return
        await self._ensure_group()
        await self._ack()
        if self._own_pending:  # an earlier process of this node id took these
            answer = await self.link.guarded(
                self.link.client.xreadgroup(GROUP, self.link.node, {EVENTS: "0"}, count=_BATCH)
            )
            entries = answer[0][1] if answer else []
            self._hand([e for e in entries if e[1]])
            self._own_pending = False  # (the rest, if more, by XAUTOCLAIM)
        if self._dead:
            await self._claim_dead()
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + max(1.0, self.claim_idle / 4)
            answer = await self.link.guarded(
                self.link.client.xautoclaim(
                    EVENTS, GROUP, self.link.node, int(self.claim_idle * 1000), "0-0", count=_BATCH
                )
            )
            claimed = answer[1]
            self.claimed += len(claimed)
            self._hand(claimed)
            self._to_ack.extend(answer[2] if len(answer) > 2 else [])  # deleted entries
        if len(self._waiting) >= MAX_WAITING:  # the database does not keep up (or is down):
            await asyncio.sleep(0.5)  # new entries wait in the stream, not in memory
            return
        try:
            answer = await self.link.guarded(
                self.link.blocking.xreadgroup(
                    GROUP, self.link.node, {EVENTS: ">"}, count=_BATCH, block=BLOCK_MS
                )
            )
        except rexc.ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data: the group again, from 0
                self._group_epoch = None
                return
            raise
        if answer:
            self._hand(answer[0][1])

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            stop_if_cancelled()  # (a cancellation redis-py answered as if nothing happened)
            try:
                await self.step()
            except RedisUnavailable:
                stop_if_cancelled()
                await asyncio.sleep(0.5)
            except Exception:
                stop_if_cancelled()
                log.exception("cluster: recorder failed; reading again")
                await asyncio.sleep(0.5)
