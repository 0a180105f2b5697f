"""The listener's periodic word with the database: its heartbeat row in
``presence_listeners`` (alive, connected, how far everything it received is
durable), and the measure of the database's clock that every time it records is
read by.

The Health page reads the row; a listener restarted after a crash closes its
dangling coverage at the row's ``heartbeat_at``, which is why that time is never
later than the oldest record not yet committed or spooled.

Times are judged by one clock, the database's (DESIGN "Clock"): a server and a
listener on hosts whose clocks disagree must still give one transition the same
time. The offset to it is measured at start and again every ``clock_interval``
seconds (this host's clock may be stepped or drift), off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine

from presence_core.database.clock import DatabaseClock
from presence_core.database.coverage import Heartbeat, write_heartbeat
from presence_core.database.records import first_line
from presence_core.listener.metrics import Stats

log = logging.getLogger("presence.listener")

__all__ = ["HeartbeatKeeper"]

CLOCK_NOTE = timedelta(seconds=1)  # a change of the offset to the database's clock worth a line


class HeartbeatKeeper:
    """Builds and writes one listener's heartbeat row, and keeps ``clock`` measured.

    ``durable_until()`` is the moment before which everything received is
    committed or spooled.
    """

    def __init__(
        self,
        engine: Engine,
        listener: str,
        server_url: str,
        stats: Stats,
        *,
        clock: DatabaseClock,
        durable_until: Callable[[], datetime],
        interval: float = 2.0,
        clock_interval: float = 60.0,
    ) -> None:
        self.engine = engine
        self.listener = listener
        self.server_url = server_url
        self.stats = stats
        self.clock = clock
        self.now = clock.now
        self.durable_until = durable_until
        self.interval = interval
        self.clock_interval = clock_interval
        self.started_at = self.now()
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

    def measure_clock(self) -> None:
        """Measure the offset to the database's clock (blocking: call it from a
        thread); a change worth knowing about is logged. Raises what the database
        raises."""
        before = self.clock.offset
        offset = self.clock.measure()
        self.started_at += offset - before  # taken by the clock as it was known then
        if abs(offset - before) > CLOCK_NOTE:
            log.warning(
                "event=clock_offset listener=%s offset_s=%.3f action=times_by_database_clock",
                self.listener,
                offset.total_seconds(),
            )

    def soon(self) -> None:
        """Beat at once (a connect or disconnect), not at the next interval."""
        self._soon.set()

    async def run(self, stop: asyncio.Event, skip: Callable[[], bool]) -> None:
        """Beat every ``interval`` seconds and measure the clock every
        ``clock_interval`` until ``stop``; neither while ``skip()`` (the database is
        down: the spool replay will tell)."""
        next_measure = time.monotonic() + self.clock_interval
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._soon.wait(), self.interval)
            self._soon.clear()
            if skip() or stop.is_set():
                continue
            if time.monotonic() >= next_measure:
                next_measure = time.monotonic() + self.clock_interval
                try:
                    await asyncio.to_thread(self.measure_clock)
                except Exception as exc:  # the last offset stays; the next beat will tell
                    self.stats.db_errors += 1
                    log.debug("event=clock_measure_failed error=%r", first_line(exc))
            beat = self.row(connected=self.stats.connected)
            try:
                await asyncio.to_thread(self.write, beat)
            except Exception as exc:  # never let the heartbeat die
                self.stats.db_errors += 1
                log.debug("event=heartbeat_failed error=%r", first_line(exc))
