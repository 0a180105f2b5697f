"""The listener's heartbeat row in ``presence_listeners``: alive, connected, how far
everything it received is durable.

The Health page reads the row; a listener restarted after a crash closes its
dangling coverage at the row's ``heartbeat_at``, which is why that time is never
later than the oldest record not yet committed or spooled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine

from presence_core.database.coverage import Heartbeat, write_heartbeat
from presence_core.database.records import first_line
from presence_core.listener.metrics import Stats

log = logging.getLogger("presence.listener")

__all__ = ["HeartbeatKeeper"]


class HeartbeatKeeper:
    """Builds and writes one listener's heartbeat row.

    ``durable_until()`` is the moment before which everything received is
    committed or spooled; ``now()`` the listener's clock.
    """

    def __init__(
        self,
        engine: Engine,
        listener: str,
        server_url: str,
        stats: Stats,
        *,
        now: Callable[[], datetime],
        durable_until: Callable[[], datetime],
        interval: float = 2.0,
    ) -> None:
        self.engine = engine
        self.listener = listener
        self.server_url = server_url
        self.stats = stats
        self.now = now
        self.durable_until = durable_until
        self.interval = interval
        self.started_at = now()
        self._soon = asyncio.Event()

    def row(self, *, connected: bool, stopped: bool = False) -> Heartbeat:
        """The row as of now (build it on the event loop: it reads the queue)."""
        now = self.now()
        return Heartbeat(
            listener=self.listener,
            server_url=self.server_url,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            heartbeat_at=now if stopped else self.durable_until(),
            connected=connected,
            last_event_at=self.stats.last_event_at,
            events_received=self.stats.events_received,
            transitions_written=self.stats.transitions_written,
            stopped_at=now if stopped else None,
        )

    def write(self, beat: Heartbeat) -> None:
        """Write ``beat`` now (blocking: call it from a thread)."""
        write_heartbeat(self.engine, beat)

    def soon(self) -> None:
        """Beat at once (a connect or disconnect), not at the next interval."""
        self._soon.set()

    async def run(self, stop: asyncio.Event, skip: Callable[[], bool]) -> None:
        """Beat every ``interval`` seconds until ``stop``; not while ``skip()`` (the
        database is down: the spool replay will tell)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._soon.wait(), self.interval)
            self._soon.clear()
            if skip() or stop.is_set():
                continue
            beat = self.row(connected=self.stats.connected)
            try:
                await asyncio.to_thread(self.write, beat)
            except Exception as exc:  # never let the heartbeat die
                self.stats.db_errors += 1
                log.debug("event=heartbeat_failed error=%r", first_line(exc))
