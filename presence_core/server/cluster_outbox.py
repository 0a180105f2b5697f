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
    each): past it the oldest is dropped and counted in ``dropped``, since a node
    cut off that long is rebuilt from its connections anyway when Redis comes back
    (the connections it holds are the truth; only intermediate transitions are lost,
    and the count says so on /health)."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self.ops: deque[Op] = deque()
        self.dropped = 0
        self.queued = 0  # operations that ever waited here
        self.replayed = 0

    def __len__(self) -> int:
        return len(self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def append(self, op: Op) -> None:
        if len(self.ops) >= self.limit:
            self.ops.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.error(
                    "cluster outbox full (%d): %d operations dropped", self.limit, self.dropped
                )
        self.ops.append(op)
        self.queued += 1

    def first(self) -> Op | None:
        return self.ops[0] if self.ops else None

    def done(self, op: Op) -> None:
        """``op`` (the first) was applied."""
        if self.ops and self.ops[0] is op:
            self.ops.popleft()
            self.replayed += 1
