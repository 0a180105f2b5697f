"""What a node could not tell Redis yet: :class:`ClusterOutbox`, in order, with times.

While Redis does not answer, every change a node's connections make (a connection
counting for a user, one that stops counting, a new status) waits here with the time
it happened, and nothing overtakes it: once one operation waits, the later ones wait
behind it. When Redis answers again the node replays them in order
(:meth:`~presence_core.server.cluster_state.ClusterState.drain`), so the transitions
they make carry their original times and none is lost.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["ClusterOutbox", "Op"]


@dataclass(slots=True)
class Op:
    """One operation for a node script: ``name`` (join, part, status), the time it
    happened (ms), and the script's own arguments."""

    name: str
    at: int
    sid: str
    key: str
    args: tuple[Any, ...] = field(default_factory=tuple)


class ClusterOutbox:
    """A bounded FIFO of :class:`Op`. ``limit`` operations at most (a few hundred bytes
    each): past it the outbox *overflows*: it keeps the oldest (replayed with their
    times) and refuses the rest (counted in ``dropped``); when Redis answers again,
    after the replay, the node reconciles Redis with the connections it holds
    (:meth:`~presence_core.server.cluster_state.ClusterState.resync`): what changed
    meanwhile is made then, ``inferred``. Only changes undone within the overflow
    (a connection that came and went) are lost, and /health counts them."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self.ops: deque[Op] = deque()
        self.dropped = 0
        self.overflowed = False  # refused operations: a resync is due
        self.queued = 0  # operations that ever waited here
        self.replayed = 0

    def __len__(self) -> int:
        return len(self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops) or self.overflowed

    def append(self, op: Op) -> None:
        if len(self.ops) >= self.limit:
            self.overflowed = True
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.error(
                    "cluster outbox full (%d): %d operations refused; the node reconciles "
                    "its connections with Redis when it answers",
                    self.limit,
                    self.dropped,
                )
            return
        self.ops.append(op)
        self.queued += 1

    def first(self) -> Op | None:
        return self.ops[0] if self.ops else None

    def done(self, op: Op) -> None:
        """``op`` (the first) was applied."""
        if self.ops and self.ops[0] is op:
            self.ops.popleft()
            self.replayed += 1
