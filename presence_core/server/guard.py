"""Who may hold a connection, and for how long: the server's defence against lock-out.

Without it, a thousand half-sent HTTP requests (under the usual limit of 1,024 open
files) were held forever, ``/health`` and real clients timed out, and the accept
loop logged "Too many open files" thousands of times a second. The guard works on
TCP connections as they are accepted, before any HTTP is parsed:

- a connection is *waiting* until a complete request has arrived (and again
  between requests on a kept-alive connection): waiting connections are closed
  after ``header_timeout`` (``idle_timeout`` between requests);
- a connection cap below the file limit (``max_connections``) and a cap per
  client address (``max_per_address``): when one is reached, the oldest waiting
  connection (of that address, for its cap) makes way for the newcomer, so
  half-open connections can never keep a real client out; only when a cap is
  full of connections in use is the newcomer answered ``503`` and closed;
- when descriptors run out anyway (EMFILE: other files, or a limit lowered while
  running), accepting backs off for a second, the cap comes down below the
  connections now open (so that from then on the oldest waiting connection makes
  way instead), the oldest waiting connections are closed to free descriptors,
  and one line is logged per minute, not one per attempt.

:class:`Acceptor` accepts the connections itself, so that every one is shown to the
guard first under any event loop; the HTTP side tells the guard when a request
starts and ends (:meth:`ConnectionGuard.started`, :meth:`ConnectionGuard.finished`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from presence_core.server.ratelimit import LogThrottle

log = logging.getLogger("presence_core.server")

Address = tuple[str, int]  # (host, port) of the client's end

OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# Descriptors of connections the guard has closed, still held until asyncio has
# closed their transports (two or three turns of the loop, a burst of accepts each):
# evictions stop beyond this, and the cap leaves room for it.
CLOSING_RESERVE = 96
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\n"
    b"content-length: 21\r\n\r\ntoo many connections\n"
)


def file_limit() -> int:
    """This process's soft limit on open files (``ulimit -n``)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(requested: int | None, limit: int | None = None) -> tuple[int, str | None]:
    """The connection cap to use and, when ``requested`` had to be lowered, why.

    Descriptors are kept back for connections being closed (CLOSING_RESERVE) and
    for everything that is not a client (the database's connections, the spool,
    logs): a sixteenth of the limit, at least 32. ``requested`` None means as many
    as the limit allows.
    """
    limit = file_limit() if limit is None else limit
    allowed = max(1, limit - CLOSING_RESERVE - max(32, limit // 16))
    if requested is None:
        return allowed, None
    if requested > allowed:
        return allowed, (
            f"at most {allowed} connections fit under the file limit ({limit}, ulimit -n); "
            f"using {allowed}, not {requested}"
        )
    return max(1, requested), None


def descriptor_cap(cap: int, held: int, limit: int | None = None) -> int:
    """The connection cap once descriptors have run out, ``held`` of them by the
    guard (connections, and those being closed): below what is held now by the
    closing reserve, so that what is not a connection keeps what it has; never
    above ``cap`` or what the (perhaps lowered) file limit allows. (Counting the
    open files would itself need a descriptor.)"""
    limit = file_limit() if limit is None else limit
    return max(1, min(cap, held - CLOSING_RESERVE - 8, limit - CLOSING_RESERVE - 8))


@dataclass(eq=False)
class _Entry:
    sock: socket.socket
    host: str
    since: float  # when it began waiting (monotonic)
    waiting: bool = True
    idle: bool = False  # waiting between requests, not for a first one


class ConnectionGuard:
    """Admission, deadlines and eviction for the server's TCP connections.

    ``clock`` is monotonic seconds (a parameter for tests). Counters:
    ``refused`` (over a cap), ``evicted`` (waiting ones closed to make room),
    ``timed_out``, ``descriptor_shortages`` (accepts that found no descriptor).
    """

    def __init__(
        self,
        *,
        max_connections: int,
        max_per_address: int,
        header_timeout: float,
        idle_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address  # 0: no cap per address
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.refused = self.evicted = self.timed_out = self.descriptor_shortages = 0
        self._clock = clock
        self._entries: dict[Address, _Entry] = {}
        self._waiting: OrderedDict[Address, None] = OrderedDict()  # oldest first
        self._host_waiting: dict[str, OrderedDict[Address, None]] = {}  # the same, by host
        self._per_host: dict[str, int] = {}
        self._closing: list[socket.socket] = []  # closed by us, descriptor not yet freed
        self._refusals = LogThrottle(log, "connections refused (over the connection caps)")
        self._shortage = LogThrottle(
            log,
            "accepts that found no file descriptor left (raise ulimit -n or lower "
            "--max-connections); accepting again in a second",
        )

    def __len__(self) -> int:
        return len(self._entries)

    # --- accepting ------------------------------------------------------------------

    def admit(self, sock: socket.socket, addr: tuple) -> bool:
        """Take a just-accepted connection, or answer 503, close it and say False."""
        key: Address = (addr[0], addr[1]) if isinstance(addr, tuple) else (str(addr), 0)
        host = key[0]
        if len(self._entries) >= self.max_connections or len(self._closing) >= CLOSING_RESERVE:
            self._forget_closed()
        if self._host_full(host):
            self._evict_oldest_waiting(1, host)
        if not self._host_full(host) and len(self._entries) >= self.max_connections:
            self._evict_oldest_waiting(1)
        if self._host_full(host) or len(self._entries) >= self.max_connections:
            self.refused += 1
            full = self._host_full(host)
            self._refusals.hit(
                f"{host} holds {self.max_per_address} in use" if full else "the server is full"
            )
            _refuse(sock)
            return False
        old = self._entries.get(key)
        if old is not None:  # the address's previous connection is gone (same port again)
            self._drop(key, old)
        self._entries[key] = _Entry(sock, host, self._clock())
        self._wait(key, host)
        self._per_host[host] = self._per_host.get(host, 0) + 1
        return True

    def _host_full(self, host: str) -> bool:
        return bool(self.max_per_address) and self._per_host.get(host, 0) >= self.max_per_address

    def out_of_descriptors(self, exc: OSError) -> None:
        """An accept failed for want of descriptors: lower the cap below what is open,
        free some, say so (rate-limited)."""
        self.descriptor_shortages += 1
        self._forget_closed()
        self.max_connections = descriptor_cap(self.max_connections, len(self) + len(self._closing))
        freed = self._evict_oldest_waiting(max(1, len(self._waiting) // 10))
        self._shortage.hit(
            f"{exc.strerror or exc}; {len(self)} open, {freed} waiting closed, "
            f"cap now {self.max_connections}"
        )

    # --- what the HTTP side reports -------------------------------------------------

    def started(self, client: tuple | None) -> None:
        """A complete request arrived on the connection from ``client``: it is in use."""
        key = _key(client)
        entry = self._entries.get(key)
        if entry is not None and entry.waiting:
            entry.waiting = False
            self._unwait(key, entry.host)

    def finished(self, client: tuple | None) -> None:
        """The request is answered: the kept-alive connection waits for the next."""
        key = _key(client)
        entry = self._entries.get(key)
        if entry is not None and not entry.waiting and entry.sock.fileno() != -1:
            entry.waiting, entry.idle, entry.since = True, True, self._clock()
            self._wait(key, entry.host)

    # --- housekeeping ---------------------------------------------------------------

    def sweep(self) -> None:
        """Forget closed connections; close waiting ones past their deadline."""
        self._forget_closed()
        now = self._clock()
        for key in list(self._waiting):
            entry = self._entries[key]
            limit = self.idle_timeout if entry.idle else self.header_timeout
            if now - entry.since >= limit:
                self.timed_out += 1
                self._close(key, entry)

    def flush_logs(self) -> None:
        self._refusals.flush()
        self._shortage.flush()

    def stats(self) -> dict:
        return {
            "tcp_connections": len(self._entries),
            "tcp_waiting": len(self._waiting),
            "tcp_closing": len(self._closing),
            "tcp_refused": self.refused,
            "tcp_evicted": self.evicted,
            "tcp_timed_out": self.timed_out,
            "descriptor_shortages": self.descriptor_shortages,
        }

    def _evict_oldest_waiting(self, count: int, host: str | None = None) -> int:
        """Close up to ``count`` of the longest-waiting connections (of ``host``)."""
        closed = 0
        queue = self._waiting if host is None else self._host_waiting.get(host, {})
        while closed < count and queue and len(self._closing) < CLOSING_RESERVE:
            key = next(iter(queue))
            self.evicted += 1
            self._close(key, self._entries[key])
            closed += 1
        return closed

    def _wait(self, key: Address, host: str) -> None:
        self._waiting[key] = None
        self._host_waiting.setdefault(host, OrderedDict())[key] = None

    def _unwait(self, key: Address, host: str) -> None:
        self._waiting.pop(key, None)
        queue = self._host_waiting.get(host)
        if queue is not None:
            queue.pop(key, None)
            if not queue:
                del self._host_waiting[host]

    def _close(self, key: Address, entry: _Entry) -> None:
        """End a connection under asyncio's feet without closing its descriptor: the
        transport sees the end of the stream and closes itself (and the descriptor)."""
        with contextlib.suppress(OSError):  # already gone
            entry.sock.shutdown(socket.SHUT_RDWR)
        self._closing.append(entry.sock)
        self._drop(key, entry)

    def _forget_closed(self) -> None:
        self._closing = [sock for sock in self._closing if sock.fileno() != -1]
        for key, entry in list(self._entries.items()):
            if entry.sock.fileno() == -1:
                self._drop(key, entry)

    def _drop(self, key: Address, entry: _Entry) -> None:
        if self._entries.get(key) is entry:
            del self._entries[key]
            self._unwait(key, entry.host)
            left = self._per_host.get(entry.host, 1) - 1
            if left > 0:
                self._per_host[entry.host] = left
            else:
                self._per_host.pop(entry.host, None)


def _key(client: tuple | None) -> Address:
    return (client[0], client[1]) if client else ("", 0)


def _refuse(sock: socket.socket) -> None:
    try:
        sock.setblocking(False)
        sock.send(_REFUSAL)
    except OSError:
        pass  # a client that is not even listening gets nothing
    finally:
        sock.close()


class Acceptor:
    """The server's accept loop, on a listening socket of its own, the same under
    asyncio's loop and uvloop (whose servers accept in C, where nothing could ask
    the guard first).

    The loop calls :meth:`_accept` when the socket is readable; it takes at most
    ``BURST`` connections per turn of the loop, so that connections the guard
    closed release their descriptors, and requests already in, such as
    ``/health``, are answered, between bursts. The burst is small on purpose: each
    connection accepted brings its handshakes (HTTP upgrade, Engine.IO, Socket.IO:
    1.3-1.8 ms of CPU) into the loop's next turns, where they delay the events and
    diffs of the clients already connected. Left in the kernel's queue
    (``listen(2048)``), the newcomers wait their turn at no cost to the others,
    and a busy server accepts no faster than it can handshake anyway. Same-run
    A/B, 2,000-user shift start at load 4-7 (bench/bench_server_v2.py), p50
    change → client: accepting 4 a turn 0.29-0.59 s in five runs of six (2.1 s in
    the sixth, 2.6 s with 32 beside it), 32 a turn 0.79-4.5 s, 8 a turn 0.38-1.3 s,
    512 (about what uvloop's own server takes) 2.1-2.6 s. Each connection the guard
    admits goes to ``serve`` (which builds its transport); a refused one was answered and
    closed by the guard. When descriptors run out, the guard is told once and the
    socket is left alone for ``QUIET`` seconds: retrying at once would spin, and
    log, for as long as the shortage lasts.
    """

    BURST = 4
    QUIET = 1.0  # seconds without accepting once descriptors ran out

    def __init__(
        self,
        sock: socket.socket,
        guard: ConnectionGuard,
        serve: Callable[[socket.socket], Coroutine[object, object, object]],
    ) -> None:
        self.sock, self.guard, self._serve = sock, guard, serve
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._errors = LogThrottle(log, "failed accepts")

    def start(self) -> None:
        """Accept from now on (on the running loop)."""
        self.sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close the listening socket (connections stay)."""
        if self._loop is not None:
            if self._resume is not None:
                self._resume.cancel()
                self._resume = None
            if self.sock.fileno() != -1:
                self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()
        self._errors.flush()

    def _accept(self) -> None:
        for _ in range(self.BURST):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # nothing (more) to accept, or a client gone before it was taken
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    self.guard.out_of_descriptors(exc)
                    self._pause()
                else:
                    self._errors.hit(str(exc))
                return
            if self.guard.admit(conn, addr):
                conn.setblocking(False)
                self._hand_over(self._serve(conn), conn)

    def _hand_over(self, coro: Coroutine[object, object, object], conn: socket.socket) -> None:
        """Run ``serve(conn)`` now, up to what it waits for, and the rest when that is done.

        An eager task (asyncio's own from Python 3.12): ``connect_accepted_socket``
        makes the connection's transport before its first wait, so the connection is
        read from the next turn of the loop on, as with the loop's own server. As a
        task, it would wait a turn to start and another to end; in a 2,000-user
        shift start, turns of tens of milliseconds, that was a tenth of a second
        before each connection was read (uvloop, bench/bench_server_v2.py)."""
        try:
            while True:
                waiting = coro.send(None)
                if isinstance(waiting, asyncio.Future) and not waiting.done():
                    waiting._asyncio_future_blocking = False  # as asyncio's Task does
                    waiting.add_done_callback(lambda _: self._hand_over(coro, conn))
                    return
        except StopIteration:
            return
        except (Exception, asyncio.CancelledError) as exc:  # the connection is lost, not the server
            self._errors.hit(f"{type(exc).__name__}: {exc}")
            conn.close()

    def _pause(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self.sock.fileno())
        self._resume = self._loop.call_later(self.QUIET, self._unpause)

    def _unpause(self) -> None:
        self._resume = None
        if self._loop is not None:
            self._loop.add_reader(self.sock.fileno(), self._accept)
