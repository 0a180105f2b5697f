"""How the server stores what it decides: through the listener's write path.

The server and the listener write one history into one database, so they write
it the same way: :class:`DatabaseWriter` is a thin thread-safe front for a
:class:`~presence_core.listener.pipeline.WritePipeline` running on an event loop
of its own thread. That gives the server what the listener has: a row the
database refuses is logged, counted and dropped while the rest of its batch is
written (:func:`~presence_core.database.records.write_records`); while the
database is down, records go to a spool on disk and are replayed in order when
it answers; at shutdown nothing pending is lost (written, or spooled and
replayed at the next start).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from presence_core.database import storage
from presence_core.listener.metrics import Stats
from presence_core.listener.pipeline import WritePipeline, default_spool_dir
from presence_core.listener.spool import Spool

log = logging.getLogger(__name__)

__all__ = ["DatabaseWriter", "default_server_spool"]


def default_server_spool(url: URL, name: str = "server") -> Path:
    """``PRESENCE_HOME/spool/server@HOST_PORT_DATABASE``: a server's spool is kept per
    database, so that a server pointed at another database never replays into it
    what it spooled for the first one."""
    where = f"{url.host or 'local'}_{url.port or 5432}_{url.database or ''}"
    return default_spool_dir(f"{name}@{re.sub(r'[^A-Za-z0-9_.-]+', '_', where)}")


class DatabaseWriter:
    """Batches transitions and sightings and writes them from a thread of its own.

    ``add_*`` never blocks on the database and may be called before :meth:`start`
    (what is added waits). Batches are written at most every ``interval``
    seconds; at most ``max_pending`` records wait in memory, more go to the spool
    (nothing is dropped for being many). Sightings of one user are merged while
    they wait. ``spool_dir`` is where records wait while the database is down
    (default :func:`default_server_spool`).

    Counters: ``transitions_written`` (new rows), ``batches``, ``failures``
    (attempts that found the database down), ``refused`` (rows the database
    refused, dropped), ``dropped`` (records lost: the spool could not take them).
    """

    def __init__(
        self,
        engine: Engine,
        interval: float = 0.5,
        max_pending: int = 200_000,
        *,
        spool_dir: Path | str | None = None,
        db_retry: float = 1.0,
    ) -> None:
        self.stats = Stats()
        self.interval = interval
        self.spool = Spool(spool_dir or default_server_spool(engine.url))
        self.pipeline = WritePipeline(
            engine,
            self.spool,
            self.stats,
            writer="thread",
            flush_interval=interval,
            linger=interval,  # one batch per interval, however busy
            queue_size=max_pending,
            db_retry=db_retry,
            on_idle=self._on_idle,
            on_written=self._written,
            intake=self,
        )
        # called (on the writer's thread) with each batch of records just committed;
        # records written from the spool are not reported (the cluster's recorder
        # then takes them again later: see presence_core/server/cluster_recorder.py)
        self.on_committed: Callable[[Sequence[object]], None] | None = None
        self._lock = threading.Lock()
        self._transitions: deque[storage.Transition] = deque()
        self._sightings: dict[str, storage.Sighting] = {}
        self._idle = threading.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._running = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._main, name="presence-db-writer", daemon=True)
        self._close_timeout: float | None = None

    # -- what the server calls (any thread) ----------------------------------------

    @property
    def engine(self) -> Engine:
        return self.pipeline.engine

    @engine.setter
    def engine(self, engine: Engine) -> None:
        self.pipeline.engine = engine

    @property
    def transitions_written(self) -> int:
        return self.stats.transitions_written

    @property
    def batches(self) -> int:
        return self.stats.batches_written

    @property
    def failures(self) -> int:
        return self.stats.db_errors

    @property
    def refused(self) -> int:
        return self.stats.rejected

    @property
    def dropped(self) -> int:
        return self.stats.dropped

    def start(self) -> None:
        """Start the writing thread (a spool an earlier run left is replayed first)."""
        self._thread.start()
        self._running.wait(10)

    def use_spool(self, directory: Path | str) -> None:
        """Spool into ``directory`` instead (before :meth:`start`): each node of a
        cluster on one machine keeps its own spool (a spool is one writer's)."""
        if self._thread.is_alive():
            raise RuntimeError("the spool is chosen before the writer starts")
        self.spool.directory = Path(directory)

    def add_transition(self, transition: storage.Transition) -> None:
        with self._lock:
            first = not self._transitions and not self._sightings
            self._transitions.append(transition)
            self._idle.clear()
        if first:
            self._wake()

    def add_sighting(self, sighting: storage.Sighting) -> None:
        with self._lock:
            first = not self._transitions and not self._sightings
            old = self._sightings.get(sighting.user_id)
            if old is None or old.last_seen <= sighting.last_seen:
                self._sightings[sighting.user_id] = sighting
            self._idle.clear()
        if first:
            self._wake()

    def pending(self) -> int:
        """Records added and not committed yet (waiting here, queued, or spooled)."""
        with self._lock:
            waiting = len(self._transitions) + len(self._sightings)
        return waiting + self.pipeline.pending

    def wait_idle(self, timeout: float) -> bool:
        """Wait until everything added so far is written (for tests and shutdown)."""
        self._wake()
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 10) -> None:
        """Write what is pending, for up to ``timeout`` seconds; what is not written
        by then (the database is down or hangs) is spooled, and replayed at the
        next start. Then the thread ends."""
        if not self._thread.is_alive():
            if self._running.is_set() or self.pending() == 0:
                return  # stopped already, or nothing to write
            self.start()  # added to but never started: write what was added now
        self._close_timeout = timeout
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        # the pipeline gives up on a hanging write after ``timeout`` (spooling it); the
        # thread may then still wait for that write to time out: nobody needs to wait too
        self._closed.wait(timeout + 5)
        self._thread.join(0.5)
        left = self.pending()
        if left:
            log.warning(
                "database writer stopped with %d records not written; kept in %s",
                left,
                self.spool.directory,
            )

    # -- the pipeline's intake (the writer's loop thread) --------------------------

    def waiting(self) -> int:
        return len(self._transitions) + len(self._sightings)

    def pump(self) -> None:
        with self._lock:
            transitions, self._transitions = self._transitions, deque()
            sightings, self._sightings = self._sightings, {}
        items = [(t.received_at, t) for t in transitions]
        items.extend((s.last_seen, s) for s in sightings.values())
        self.pipeline.enqueue_all(items)

    def _on_idle(self) -> None:
        with self._lock:
            if not self._transitions and not self._sightings:
                self._idle.set()

    def _written(self, records: Sequence[object]) -> None:
        hook = self.on_committed
        if hook is not None:
            hook(records)

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self.pipeline.wake)

    # -- the thread ----------------------------------------------------------------

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.pipeline.start()
        self._running.set()
        self.pipeline.wake()  # for what was added before the start
        try:
            await self._stop.wait()
            await self.pipeline.close(self._close_timeout)
            if self.pending() == 0:
                self._idle.set()
        finally:
            self._closed.set()
