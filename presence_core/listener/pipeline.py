"""The write pipeline: records queued in memory, committed in batches, spooled to
disk while the database cannot take them, replayed in order when it can.

One :class:`WritePipeline` runs as a task on an event loop. Whoever produces
records (the listener's socket handlers) calls :meth:`WritePipeline.enqueue`,
which never waits for the database. The task commits what is queued with
:func:`presence_core.database.records.write_records` (idempotent; a row the
database refuses is logged, counted and dropped, the rest written), at least every
``flush_interval`` seconds, from a child process
(:mod:`presence_core.listener.writer`) or a worker thread.

When the database is down, a writer process dies, or the bounded queue is full,
records go to the append-only spool (:mod:`presence_core.listener.spool`) and
every record after them follows, so that order is kept; the spool is replayed
every ``db_retry`` seconds until it is empty, and writing then goes straight to
the database again. After :data:`WRITER_RETRIES` writer processes lost in a row
(a broken environment), batches are committed from a thread instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeVar

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from presence_core.database.records import (
    Record,
    first_line,
    record_from_dict,
    record_to_dict,
    write_records,
)
from presence_core.errors import DatabaseUnavailable
from presence_core.listener.decisions import spool_name
from presence_core.listener.metrics import Stats
from presence_core.listener.spool import Spool, SpoolError
from presence_core.listener.writer import ProcessWriter, WriterLost

log = logging.getLogger("presence.listener")

__all__ = ["WRITERS", "WRITER_RETRIES", "Intake", "WritePipeline", "default_spool_dir"]

WRITERS = ("process", "thread")  # where batches are written: a child process, or a thread
WRITER_RETRIES = 3  # writer processes lost in a row before writing moves to a thread

# What waits for the writer: (received_at, record). A plain tuple, made once per event.
Pending = tuple[datetime, Record]
T = TypeVar("T")


def default_spool_dir(name: str) -> Path:
    """``PRESENCE_HOME/spool/NAME``: where a writer called ``name`` spools by default
    (the home as :func:`presence_core.config.load_settings` reads it)."""
    from presence_core.config import load_settings

    return load_settings().home / "spool" / spool_name(name)


class Intake(Protocol):
    """Where records come from before they are queued: the pipeline asks how many
    are waiting (to gather a batch) and has them queued before taking one, so a
    producer can hand over work in bulk instead of event by event."""

    def waiting(self) -> int: ...

    def pump(self) -> None: ...


class WritePipeline:
    """Queue, batches, spool and replay, for one engine and one spool.

    :meth:`start` on the event loop, :meth:`enqueue` from it, and ``await``
    :meth:`close` to write (or spool) everything and stop. ``stats`` receives
    the counters (written, rejected, spooled, replayed, database errors, writers
    lost, dropped). ``on_written``, when given, is called on the loop with each
    batch just committed; ``on_idle`` each time everything is committed and
    nothing waits. ``connect_args`` are the writer process's connection options (an
    engine cannot tell them back); None means the defaults.
    """

    def __init__(
        self,
        engine: Engine,
        spool: Spool,
        stats: Stats,
        *,
        writer: str = "process",
        connect_args: dict | None = None,
        flush_interval: float = 0.2,
        linger: float = 0.02,
        max_batch: int = 5000,
        queue_size: int = 100_000,
        db_retry: float = 1.0,
        on_written: Callable[[Sequence[Record]], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        intake: Intake | None = None,
    ) -> None:
        if writer not in WRITERS:
            raise ValueError(f"writer must be one of {', '.join(WRITERS)}, not {writer!r}")
        self.engine = engine
        self.spool = spool
        self.stats = stats
        self.writer = writer
        self.connect_args = connect_args
        self.flush_interval = flush_interval
        self.linger = linger
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.db_retry = db_retry
        self.on_written = on_written
        self.on_idle = on_idle
        self.intake = intake
        self._queue: deque[Pending] = deque()
        self._inflight: list[Pending] | None = None
        self._spooling = False
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._process_writer: ProcessWriter | None = None
        self._lost_in_a_row = 0
        self._backlog = 0  # records spooled and not replayed yet, as far as known
        self._drops_logged = 0

    # -- what callers see ----------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Records queued in memory, not yet handed to a writer."""
        return len(self._queue)

    @property
    def spooling(self) -> bool:
        """True while records go to the spool (the database is down or behind)."""
        return self._spooling

    @property
    def busy(self) -> bool:
        """True while anything queued, being written or spooled is not yet committed."""
        return bool(self._queue) or self._inflight is not None or self._spooling

    @property
    def pending(self) -> int:
        """Records not committed yet: queued, being written, or waiting in the spool."""
        return len(self._queue) + len(self._inflight or ()) + self._backlog

    @property
    def writes_in_process(self) -> bool:
        """True while batches go to a writer process (False: a thread of this one)."""
        return self._process_writer is not None

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid while one runs."""
        return self._process_writer.pid if self._process_writer is not None else None

    def oldest_pending(self) -> datetime | None:
        """When the oldest record not yet committed or spooled was received."""
        found = [items[0][0] for items in (self._queue, self._inflight) if items]
        return min(found) if found else None

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer task on the running loop. A spool an earlier run left is
        replayed before anything newer is written (so order is kept)."""
        self._wake = asyncio.Event()
        if self.spool.segments():
            self._spooling = True
        if self.writer == "process":
            url = self.engine.url.render_as_string(hide_password=False)
            self._process_writer = ProcessWriter(url, self.connect_args)
        self._task = asyncio.create_task(self._run(), name="write-pipeline")

    def wake(self) -> None:
        """Have the writer look at its queue and intake now."""
        if self._wake is not None:
            self._wake.set()

    def enqueue(self, record: Record, received_at: datetime) -> None:
        """Queue ``record`` for writing (on the loop; never waits for the database)."""
        item = (received_at, record)
        if self._spooling:
            self._spool([item])
            return
        if len(self._queue) >= self.queue_size:
            self._overflow([item])
            return
        self._queue.append(item)
        if len(self._queue) == 1 or len(self._queue) >= self.max_batch:
            self.wake()

    def enqueue_all(self, items: Sequence[Pending]) -> None:
        """Queue many ``(received_at, record)`` at once (one spool write while spooling)."""
        if not items:
            return
        if self._spooling:
            self._spool(items)
            return
        if len(self._queue) + len(items) > self.queue_size:
            self._overflow(items)
            return
        was = len(self._queue)
        self._queue.extend(items)
        if was == 0 or len(self._queue) >= self.max_batch:
            self.wake()

    def _overflow(self, items: Sequence[Pending]) -> None:
        """The bounded queue is full: it and ``items`` go to the spool, in order."""
        log.warning("event=queue_full depth=%d action=spool", len(self._queue))
        spilled = [*self._queue, *items]
        self._queue.clear()
        self._spooling = True
        self._spool(spilled)

    async def read_committed(self, read: Callable[[Engine], T], timeout: float) -> T | None:
        """``read(engine)`` (in a thread) once everything queued is committed, so that
        it sees every record enqueued before; None when the pipeline is spooling
        (the database is down or behind), the read fails, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        self.wake()
        while self.busy:
            if self._spooling or time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.01)
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(read, self.engine), max(0.1, deadline - time.monotonic())
            )
        except (SQLAlchemyError, psycopg.Error, OSError, TimeoutError) as exc:
            self.stats.db_errors += 1
            log.warning("event=read_failed error=%r", first_line(exc))
            return None

    async def close(self, timeout: float | None = None) -> None:
        """Write what is queued (or spool it when the database is down, with one last
        replay attempt) and stop; the spool is synced and closed. After ``timeout``
        seconds (a database that hangs) whatever is not committed is spooled, the
        batch being written included (writes are idempotent), and it stops."""
        self._closing = True
        self.wake()
        try:
            if self._task is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(self._task), timeout)
                except TimeoutError:
                    log.warning("event=close_timeout action=spool records=%d", self.pending)
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
                    self._spooling = True  # the batch being written went first
                    self._spool(self._take(len(self._queue)))
                    self._pump()  # and what is still in the intake after the queue
                    self.spool.sync()
        finally:
            if self._process_writer is not None:
                await self._process_writer.close()
            self.spool.close()

    def replay_now(self) -> int:
        """Replay a spool left by an earlier run, blocking (call it from a thread);
        returns how many records were replayed. Raises DatabaseUnavailable."""
        self.spool.rotate()
        replayed = self.spool.replay(self._write_dicts)
        self.stats.replayed += replayed
        return replayed

    # -- the writer task -----------------------------------------------------------

    def _waiting(self) -> int:
        return len(self._queue) + (self.intake.waiting() if self.intake is not None else 0)

    def _pump(self) -> None:
        if self.intake is not None:
            self.intake.pump()

    def _spool(self, items: Sequence[Pending]) -> None:
        try:
            added = self.spool.append(record_to_dict(record) for _, record in items)
        except (OSError, SpoolError) as exc:  # a full disk, a spool held by another writer
            self.stats.dropped += len(items)
            self._drops_logged += 1
            if self._drops_logged <= 10 or self._drops_logged % 1000 == 0:
                log.error(
                    "event=records_lost records=%d total=%d error=%r",
                    len(items),
                    self.stats.dropped,
                    str(exc),
                )
            return
        self.stats.spooled += added
        self._backlog += added

    def _take(self, most: int | None = None) -> list[Pending]:
        n = min(len(self._queue), self.max_batch if most is None else most)
        return [self._queue.popleft() for _ in range(n)]

    async def _run(self) -> None:
        assert self._wake is not None
        next_replay = 0.0
        while True:
            waiting = self._waiting()
            if not waiting and not self._closing:
                if self.on_idle is not None and not self._spooling and not self._queue:
                    self.on_idle()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval)
                waiting = self._waiting()
            if 0 < waiting < self.max_batch and not self._closing and self.linger > 0:
                await asyncio.sleep(self.linger)  # gather a batch: one commit for many events
            self._pump()
            batch = self._take()
            if self._spooling:
                if batch:
                    self._spool(batch)
                if time.monotonic() >= next_replay or self._closing:  # closing: one last try
                    if await self._replay():
                        continue
                    next_replay = time.monotonic() + self.db_retry
                if self._closing and not self._queue:
                    self.spool.sync()
                    log.warning("event=stopped_with_spool records_kept_in=%s", self.spool.directory)
                    return
                continue
            if batch and not await self._write(batch):
                next_replay = time.monotonic() + self.db_retry
            if self._closing and not self._queue and not self._spooling:
                return

    async def _write(self, batch: list[Pending]) -> bool:
        """Commit one batch; False when it was spooled instead (the batch counts as
        pending throughout: it is in flight until it is in the spool)."""
        self._inflight = batch
        try:
            records = [record for _, record in batch]
            if self._process_writer is not None:
                inserted, refused = await self._process_writer.write(records)
            else:
                inserted, refused = await asyncio.to_thread(write_records, self.engine, records)
            self.stats.transitions_written += inserted
            self.stats.rejected += refused
            self.stats.batches_written += 1
            self._lost_in_a_row = 0
            if self.on_written is not None:
                self.on_written(records)
            return True
        except asyncio.CancelledError:  # closing gave up waiting: keep the batch
            self._keep(batch)
            raise
        except WriterLost as exc:  # the batch is spooled; the next one gets a new writer
            self._keep(batch)
            self._writer_lost(exc, len(batch))
        except Exception as exc:  # down, or anything unforeseen: keep it, retry later
            self._keep(batch)
            self.stats.db_errors += 1
            if not isinstance(exc, DatabaseUnavailable):
                log.exception("event=write_failed action=spool")
            log.warning(
                "event=database_down action=spool records=%d error=%r", len(batch), str(exc)
            )
        finally:
            self._inflight = None
        return False

    def _keep(self, batch: list[Pending]) -> None:
        """Spool a batch that could not be committed; what follows is spooled too."""
        self._spooling = True
        self._spool(batch)

    def _writer_lost(self, exc: WriterLost, records: int) -> None:
        self.stats.writers_lost += 1
        self._lost_in_a_row += 1
        log.warning("event=writer_lost action=spool records=%d error=%r", records, str(exc))
        if self._lost_in_a_row >= WRITER_RETRIES:
            # a writer that cannot even start (a broken environment) must not stop the
            # logging: commit from a thread of this process instead, slower but working
            log.error(
                "event=writer_process_failing action=write_in_thread failures=%d",
                self._lost_in_a_row,
            )
            self._process_writer = None

    async def _replay(self) -> bool:
        """Replay the spool into the database; True when it is empty and writing
        goes straight to the database again."""
        try:
            while True:
                self.spool.rotate()
                replayed = await asyncio.to_thread(self.spool.replay, self._write_dicts)
                self.stats.replayed += replayed
                self._backlog = max(0, self._backlog - replayed)
                if replayed:
                    log.info("event=spool_replayed records=%d", replayed)
                if not self.spool.segments():
                    self._spooling = False  # checked and set on the loop thread: no race
                    self._backlog = 0
                    log.info("event=database_back spool=empty")
                    return True
        except Exception as exc:
            self.stats.db_errors += 1
            if not isinstance(exc, (DatabaseUnavailable, SpoolError)):
                log.exception("event=replay_failed")
            log.debug("event=replay_failed error=%r", str(exc))
            return False

    def _write_dicts(self, dicts: list[dict]) -> None:
        """Write spooled records (runs in a worker thread); raises DatabaseUnavailable."""
        records = []
        for data in dicts:
            try:
                records.append(record_from_dict(data))
            except (KeyError, ValueError, TypeError) as exc:
                self.stats.rejected += 1
                log.warning("event=spool_record_refused error=%r", str(exc))
        inserted, refused = write_records(self.engine, records)
        self.stats.transitions_written += inserted
        self.stats.rejected += refused
        self.stats.batches_written += 1
