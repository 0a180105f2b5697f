"""An append-only spool on disk: where the listener keeps records while the
database is down, and replays them from when it returns.

A spool is a directory of segment files ``000001.jsonl``, ``000002.jsonl``…,
one JSON object per line, appended in order. :meth:`Spool.append` writes to the
newest (open) segment; :meth:`Spool.rotate` closes it so that the next append
starts a new one; :meth:`Spool.replay` hands the records of the closed segments
to a callback, oldest first, in chunks, and deletes each segment once every
chunk of it has been accepted. A chunk the callback refuses (it raises) stays
on disk and is offered again next time, so the callback must be idempotent (the
listener's writes are: the unique key of ``presence_transitions``).

Durability (the fsync policy): each :meth:`append` is one ``write()`` of whole
lines on an ``O_APPEND`` descriptor, so once it returns the records survive the
death of the process (SIGKILL included). They are forced to the disk with
``fsync`` at most every ``fsync_interval`` seconds (default 0.2 s) and always on
:meth:`rotate` and :meth:`close`: a crash of the whole machine may lose at most
that last fraction of a second of spooled records. A torn last line (a crash in
the middle of a write) is skipped on replay and counted.

Only one task may append and one replay at a time; appends may run while a
replay of closed segments is in progress (they go to a different file).

One writer per spool: a process replaying a spool deletes segments, so a second
process appending to the same directory would lose what it appends. The first
append or replay therefore takes the spool's lock (``flock`` on ``.lock`` in the
directory, held until :meth:`Spool.close`, released by the kernel when the
process dies); another :class:`Spool` on the same directory gets
:class:`SpoolBusy` until then. Reading (:meth:`Spool.segments`,
:meth:`Spool.read_all`) needs no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from presence_core.errors import PresenceError

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
LOCK = ".lock"


class SpoolError(PresenceError):
    """The spool cannot be used (its directory cannot be made or opened)."""


class SpoolBusy(SpoolError):
    """Another process (or another :class:`Spool` of this one) holds this spool."""


class Spool:
    """The spool in ``directory`` (created when first needed)."""

    def __init__(self, directory: Path | str, *, fsync_interval: float = 0.2) -> None:
        self.directory = Path(directory)
        self.fsync_interval = fsync_interval
        self._fd: int | None = None
        self._open_path: Path | None = None
        self._last_fsync = 0.0
        self._dirty = False
        self._lock_fd: int | None = None
        self.records_appended = 0
        self.bad_lines = 0

    # -- the lock ------------------------------------------------------------------

    def claim(self) -> None:
        """Take the spool's lock (creating the directory); a no-op when held already.
        Raises :class:`SpoolBusy` naming the holder's pid when another has it, and
        :class:`SpoolError` when the directory cannot be used."""
        if self._lock_fd is not None:
            return
        path = self.directory / LOCK
        for _ in range(20):
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            except FileNotFoundError:
                continue  # removed by a writer closing meanwhile: again
            except OSError as exc:
                raise SpoolError(f"cannot use the spool {self.directory}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise SpoolBusy(
                    f"the spool {self.directory} is in use by another writer (pid {holder})"
                ) from None
            try:  # a holder that closed meanwhile removed the file this lock is on
                current = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                current = False
            if current:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._lock_fd = fd
                return
            os.close(fd)
        raise SpoolBusy(f"the spool {self.directory} keeps changing hands")

    def release(self) -> None:
        """Let go of the lock (a closed spool may be claimed by another writer). An
        empty spool leaves nothing behind: its lock file and directory are removed."""
        if self._lock_fd is None:
            return
        if not self.segments():
            with contextlib.suppress(OSError):
                (self.directory / LOCK).unlink()  # still held: nobody can claim it now
                self.directory.rmdir()
        os.close(self._lock_fd)
        self._lock_fd = None

    # -- writing -------------------------------------------------------------------

    def append(self, records: Iterable[dict]) -> int:
        """Append ``records`` (JSON-serialisable dicts) in order; return how many."""
        lines = [json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in records]
        if not lines:
            return 0
        data = ("\n".join(lines) + "\n").encode()
        fd = self._open()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        self._dirty = True
        self.records_appended += len(lines)
        if time.monotonic() - self._last_fsync >= self.fsync_interval:
            self.sync()
        return len(lines)

    def sync(self) -> None:
        """Force what was appended to the disk now."""
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        self._last_fsync = time.monotonic()

    def rotate(self) -> None:
        """Close the open segment (after an fsync); the next append opens a new one."""
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None
            self._open_path = None

    def close(self) -> None:
        """Sync, close and release the lock; the spool may be used again afterwards."""
        self.rotate()
        self.release()

    def _open(self) -> int:
        if self._fd is None:
            self.claim()
            segments = self.segments()
            number = int(segments[-1].stem) + 1 if segments else 1
            path = self.directory / f"{number:06d}{SUFFIX}"
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._open_path = path
            _fsync_directory(self.directory)
        return self._fd

    # -- reading -------------------------------------------------------------------

    def segments(self) -> list[Path]:
        """Every segment file, oldest first (the open one last, if any)."""
        if not self.directory.exists():
            return []
        try:
            entries = list(self.directory.iterdir())
        except FileNotFoundError:
            return []
        found = [p for p in entries if p.suffix == SUFFIX and p.stem.isdigit()]
        return sorted(found, key=lambda p: int(p.stem))

    def closed_segments(self) -> list[Path]:
        return [p for p in self.segments() if p != self._open_path]

    def empty(self) -> bool:
        """True when no segment holds any record."""
        return not any(_size(p) for p in self.segments())

    def size_bytes(self) -> int:
        """Bytes waiting in the spool (a replay may be deleting segments meanwhile)."""
        return sum(_size(p) for p in self.segments())

    def replay(self, accept: Callable[[list[dict]], None], chunk: int = 5000) -> int:
        """Offer every record of the closed segments to ``accept``, oldest first, in
        chunks of at most ``chunk``; delete each segment once all of it is accepted.

        Returns how many records were accepted. An exception from ``accept`` stops
        the replay and propagates; the segment it was reading stays (whole).
        """
        total = 0
        closed = self.closed_segments()
        if closed:
            self.claim()
        for path in closed:
            for records in self._chunks(path, chunk):
                accept(records)
                total += len(records)
            path.unlink()
            _fsync_directory(self.directory)
        return total

    def read_all(self) -> list[dict]:
        """Every record in every segment, oldest first (for tests and inspection)."""
        return [
            r for path in self.segments() for batch in self._chunks(path, 10_000) for r in batch
        ]

    def _chunks(self, path: Path, size: int) -> Iterator[list[dict]]:
        batch: list[dict] = []
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not an object")
                except ValueError:
                    self.bad_lines += 1
                    log.warning("event=spool_bad_line file=%s line=%d", path.name, number)
                    continue
                batch.append(record)
                if len(batch) >= size:
                    yield batch
                    batch = []
        if batch:
            yield batch


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
