"""The server's HTTP side: ``GET /health``, and uvicorn serving the whole ASGI app.

Socket.IO requests go to python-socketio; everything else comes here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable

import uvicorn

from presence_core.errors import PresenceError


class HealthApp:
    """An ASGI app: ``GET /health`` answers ``health()`` as JSON, anything else 404."""

    def __init__(self, health: Callable[[], dict]) -> None:
        self.health = health

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        if scope.get("path") == "/health":
            status, body = 200, json.dumps(self.health()).encode()
        else:
            status, body = 404, b'{"error": "not found"}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the caller installs handlers that
    first stop the presence logic, then the web server."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: any free port); PresenceError when the
    address cannot be used (busy, not ours, not a port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted sockets inherit it (Linux): without it, an event followed by its ack
    # (two small writes) waits ~40 ms for the client's delayed ACK (Nagle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PresenceError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


class WebServer:
    """uvicorn serving one ASGI app on one socket, started and stopped from a running
    event loop (:meth:`start`, :meth:`request_exit`, :meth:`wait`)."""

    def __init__(self, app: Callable, *, max_message_bytes: int) -> None:
        self.app = app
        self.max_message_bytes = max_message_bytes
        self.port: int | None = None
        self._uvicorn: _Uvicorn | None = None
        self._task: asyncio.Task | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` and return the port once uvicorn accepts connections."""
        sock = listening_socket(host, port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=3,
            ws_max_size=self.max_message_bytes + 1024,
        )
        self._uvicorn = _Uvicorn(config)
        self._task = asyncio.create_task(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:
            if self._task.done():
                self._task.result()
                raise PresenceError("the web server stopped while starting")
            await asyncio.sleep(0.01)
        return self.port

    def request_exit(self, *, force: bool = False) -> None:
        """Stop accepting and close connections gracefully (``force``: at once)."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            if force:
                self._uvicorn.force_exit = True

    @property
    def exiting(self) -> bool:
        return self._uvicorn is not None and self._uvicorn.should_exit

    async def wait(self) -> None:
        """Until uvicorn has stopped (after :meth:`request_exit`)."""
        if self._task is not None:
            await self._task
