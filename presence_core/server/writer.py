"""How the server stores what it decides: transitions and sightings, batched, off the event loop."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

from presence_core.database import storage

log = logging.getLogger(__name__)


class DatabaseWriter:
    """Batches transitions and sightings and writes them from a thread of its own.

    ``add_*`` never blocks on the database. A failed batch is kept and retried
    (transitions first, at most ``max_pending``; sightings are merged per user).
    """

    def __init__(self, engine: Engine, interval: float = 0.5, max_pending: int = 200_000) -> None:
        self.engine = engine
        self.interval = interval
        self.max_pending = max_pending
        self.transitions_written = 0
        self.batches = 0
        self.failures = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._transitions: list[storage.Transition] = []
        self._sightings: dict[str, storage.Sighting] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="presence-db-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add_transition(self, transition: storage.Transition) -> None:
        with self._lock:
            if len(self._transitions) >= self.max_pending:
                self._transitions.pop(0)
                self.dropped += 1
            self._transitions.append(transition)
            self._idle.clear()

    def add_sighting(self, sighting: storage.Sighting) -> None:
        with self._lock:
            old = self._sightings.get(sighting.user_id)
            if old is None or old.last_seen <= sighting.last_seen:
                self._sightings[sighting.user_id] = sighting
            self._idle.clear()

    def pending(self) -> int:
        with self._lock:
            return len(self._transitions) + len(self._sightings)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until everything added so far is written (for tests and shutdown)."""
        self._wake.set()
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 10) -> None:
        """Write what is pending (trying for up to ``timeout`` seconds) and stop."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        left = self.pending()
        if left:
            log.warning("database writer stopped with %d writes not done", left)

    def _run(self) -> None:
        delay = self.interval
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            with self._lock:
                transitions, self._transitions = self._transitions, []
                sightings, self._sightings = self._sightings, {}
            if transitions or sightings:
                try:
                    storage.write_batch(self.engine, transitions, list(sightings.values()))
                except Exception as exc:  # the database is down or slow: keep and retry
                    self.failures += 1
                    log.warning("database write failed (%s); will retry", exc)
                    with self._lock:
                        self._transitions[:0] = transitions
                        for s in sightings.values():
                            old = self._sightings.get(s.user_id)
                            if old is None or old.last_seen < s.last_seen:
                                self._sightings[s.user_id] = s
                    delay = min(delay * 2, 5.0)
                    if self._stopping:
                        return
                    continue
                self.batches += 1
                self.transitions_written += len(transitions)
                delay = self.interval
            with self._lock:
                if not self._transitions and not self._sightings:
                    self._idle.set()
            if self._stopping and self._idle.is_set():
                return
