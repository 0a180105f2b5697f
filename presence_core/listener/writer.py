"""Run the listener's writes in a child process, so that writing never competes
with receiving for the interpreter lock.

In one process the socket's event loop and a writer thread take turns holding
the GIL: each time the writer waits for PostgreSQL it lets go, and it must then
wait for the loop to let go again. Under a stream of events the two slow each
other down (docs/benchmarks.md, listener). A child process has its own
interpreter; the listener's event loop only hands it batches of records over a
socket pair, with no helper thread in the listener.

The child is ``python -m presence_core.listener.writer FD``: it reads its settings (the
database URL, password included, never on a command line) and then batches from
the socket, writes each with :func:`presence_core.database.records.write_records`, and
answers with the result. It ignores SIGINT and SIGTERM, because the listener
decides when writing ends (it flushes first); it exits when the socket closes,
which is also what happens when the listener dies.

Messages are an 8-byte big-endian length and a pickle. Pickle is safe here: both
ends are this module, connected by a socket pair nobody else holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

from presence_core.database.records import Record, write_records
from presence_core.errors import DatabaseUnavailable

log = logging.getLogger("presence.listener")

_HEADER = 8


class WriterLost(Exception):
    """The writer process died during a batch. The batch may or may not have been
    committed; writes are idempotent, so it can be written again."""


class ProcessWriter:
    """:func:`presence_core.database.records.write_records` in a child process, driven from
    an asyncio event loop. One batch at a time; the child starts on first use
    and again after it is lost. ``url`` includes the password; ``connect_args``
    are psycopg connection options (None: :func:`presence_core.database.engine.make_engine`'s).
    """

    def __init__(self, url: str, connect_args: dict | None = None) -> None:
        self.url = url
        self.connect_args = connect_args
        self._process: subprocess.Popen | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self._process.pid if self._process is not None else None

    async def write(self, records: Sequence[Record]) -> tuple[int, int]:
        """Commit ``records``; returns (transitions inserted, rows rejected).

        Raises :class:`presence_core.errors.DatabaseUnavailable` as ``write_records``
        does, and :class:`WriterLost` when the child died or could not start.
        """
        if self._writer is None:
            await self._start()
        assert self._reader is not None and self._writer is not None
        payload = pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._writer.write(len(payload).to_bytes(_HEADER, "big"))
            self._writer.write(payload)
            await self._writer.drain()
            size = int.from_bytes(await self._reader.readexactly(_HEADER), "big")
            answer = pickle.loads(await self._reader.readexactly(size))
        except BaseException as exc:  # lost, or cancelled mid-message: never reuse the stream
            await self._discard()
            if isinstance(exc, (OSError, EOFError, asyncio.IncompleteReadError)):
                raise WriterLost(f"the writer process died: {exc!r}") from None
            raise
        if answer[0] == "ok":
            return answer[1], answer[2]
        raise answer[1]

    async def close(self) -> None:
        """Let the child finish and exit (it stops when its socket closes)."""
        process, writer = self._process, self._writer
        self._process = self._reader = self._writer = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if process is not None:
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)

    async def _start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "presence_core.listener.writer", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise WriterLost(f"the writer process could not start: {exc}") from None
        finally:
            theirs.close()
        self._reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        settings = {
            "url": self.url,
            "connect_args": self.connect_args,
            "level": _level(),
            "format": _format(),
        }
        payload = pickle.dumps(settings)
        self._writer.write(len(payload).to_bytes(_HEADER, "big") + payload)
        log.info("event=writer_started pid=%d", self._process.pid)

    async def _discard(self) -> None:
        process, writer = self._process, self._writer
        self._process = self._reader = self._writer = None
        if writer is not None:
            writer.close()
        if process is not None and process.poll() is None:
            process.kill()
            await asyncio.to_thread(process.wait)


def _level() -> int:
    return logging.getLogger("presence").getEffectiveLevel()


def _format() -> str | None:
    root = logging.getLogger()
    for handler in root.handlers:
        if handler.formatter is not None:
            return handler.formatter._fmt
    return None


# --- the child ---------------------------------------------------------------------------


def _read(stream, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def _send(sock: socket.socket, answer: tuple) -> None:
    try:
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an error that does not pickle: send what it says
        exc = answer[1]
        data = pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
    sock.sendall(len(data).to_bytes(_HEADER, "big") + data)


def serve(sock: socket.socket) -> None:
    """The child's loop: settings, then batches until the socket closes."""
    stream = sock.makefile("rb")
    header = _read(stream, _HEADER)
    if header is None:
        return
    settings = pickle.loads(_read(stream, int.from_bytes(header, "big")) or b"")
    logging.basicConfig(level=settings["level"], format=settings["format"] or logging.BASIC_FORMAT)
    from presence_core.database import engine as db

    options = {"connect_args": settings["connect_args"]} if settings["connect_args"] else {}
    engine = db.make_engine(settings["url"], **options)
    try:
        while (header := _read(stream, _HEADER)) is not None:
            body = _read(stream, int.from_bytes(header, "big"))
            if body is None:
                return
            try:
                answer: tuple = ("ok", *write_records(engine, pickle.loads(body)))
            except DatabaseUnavailable as exc:
                answer = ("error", exc)
            except Exception as exc:  # a bug: say so here, with the traceback
                log.exception("event=writer_failed")
                answer = ("error", exc)
            _send(sock, answer)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(args[0]))
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the listener went away: nothing left to answer
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
