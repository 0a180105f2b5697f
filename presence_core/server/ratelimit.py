"""Limits on how fast things may happen: a user's status changes, and log lines.

Both are pure bookkeeping on a monotonic clock passed in by the caller, so tests
can drive them without waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class ChangeLimiter:
    """Per-user token buckets: each user may change status ``rate`` times a second on
    average, ``burst`` times in a row.

    Why: every change is a row, a broadcast to every client, and a time at least a
    millisecond after the previous one; a client flooding changes would otherwise
    push its own history into the future and everyone's broadcasts behind it.
    """

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a change limit needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._prune_at = 10_000

    def allow(self, key: str, now: float) -> bool:
        """Take one change for ``key`` at monotonic time ``now``; False when none is left."""
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > self._prune_at:
            self._prune(now)
        return True

    def _prune(self, now: float) -> None:
        """Forget buckets that have filled up again: they are the same as no bucket."""
        refill = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < refill}
        self._prune_at = max(10_000, 2 * len(self._buckets))  # amortised O(1)

    def describe(self) -> str:
        return f"{self.rate:g} status changes a second per user (bursts of {self.burst})"


class LogThrottle:
    """One log line for the first of a kind of event, then at most one summary line
    per ``interval`` seconds ("N … in the last 60 s"), so that no client can
    multiply the log's volume by repeating a mistake."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval: float = 60.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.what, self.interval, self.level = logger, what, interval, level
        self.total = 0
        self._clock = clock
        self._pending = 0
        self._last_detail = ""
        self._window_start: float | None = None

    def hit(self, detail: str = "") -> None:
        """One more occurrence; ``detail`` (one line) describes it."""
        self.total += 1
        self._last_detail = detail
        now = self._clock()
        start = self._window_start
        expired = start is not None and now - start >= self.interval
        if start is None or (expired and not self._pending):  # the first in a while
            self._window_start = now
            self.logger.log(
                self.level,
                "%s: %s; more are counted and logged at most once every %g s",
                self.what,
                detail or "one",
                self.interval,
            )
            return
        self._pending += 1
        if expired:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Log the summary of what was counted since the last line, if anything."""
        now = self._clock() if now is None else now
        if self._pending:
            self.logger.log(
                self.level,
                "%d %s in the last %d s (last: %s)",
                self._pending,
                self.what,
                max(1, round(now - (now if self._window_start is None else self._window_start))),
                self._last_detail or "-",
            )
            self._window_start = now
        self._pending = 0
