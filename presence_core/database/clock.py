"""The one clock stored times are judged by: the database server's.

A server and a listener writing the same history run on different machines
whose clocks may disagree by a minute. If each judged event times by its own
clock, the same transition could get two different times and be stored twice.
Both measure their offset to the database's clock instead, and apply the clock
rule (no stored time more than a few seconds ahead of "now") against that.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

__all__ = ["DatabaseClock"]


class DatabaseClock:
    """This process's estimate of the database's clock.

    :meth:`measure` asks the database (a few round trips; call it from a thread
    or at start, never from an event loop); :meth:`now` is cheap and never does
    I/O. Until the first successful measurement the offset is zero, so a process
    without a database (``--no-db``) simply uses its own clock.
    """

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine
        self.offset = timedelta(0)
        self.measured_at: float | None = None  # time.monotonic() of the last measurement
        self.uncertainty = timedelta(0)  # half the best round trip

    def measure(self, samples: int = 3) -> timedelta:
        """Measure the offset (database minus local), keeping the sample with the
        shortest round trip; returns it. Raises what the database raises."""
        if self.engine is None:
            return self.offset
        best: tuple[float, timedelta] | None = None
        with self.engine.connect() as conn:
            for _ in range(samples):
                before = time.time()
                remote = conn.execute(text("select clock_timestamp()")).scalar_one()
                after = time.time()
                local = datetime.fromtimestamp((before + after) / 2, UTC)
                trip = after - before
                if best is None or trip < best[0]:
                    best = (trip, remote - local)
        assert best is not None
        self.offset = best[1]
        self.uncertainty = timedelta(seconds=best[0] / 2)
        self.measured_at = time.monotonic()
        return self.offset

    def now(self) -> datetime:
        """The database's time now, as well as this process knows it (UTC)."""
        return datetime.now(UTC) + self.offset
