"""Run the Node.js fixtures in tests/node (the guide's server, the reference client).

`make test` runs `npm ci` there first; these helpers only start processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

NODE_DIR = Path(__file__).parent / "node"


def node_available() -> bool:
    return shutil.which("node") is not None and (NODE_DIR / "node_modules" / "socket.io").exists()


@dataclass
class NodeServer:
    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def guide_server(port: int = 0, timeout: float = 15) -> Iterator[NodeServer]:
    """Start tests/node/guide_server.js; yield it once it listens; stop it after."""
    if not node_available():
        raise RuntimeError("Node fixtures are not installed: run `npm ci` in tests/node")
    process = subprocess.Popen(
        ["node", str(NODE_DIR / "guide_server.js"), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=NODE_DIR,
        env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
    )
    try:
        deadline = time.monotonic() + timeout
        line = process.stdout.readline()  # blocks until the server prints or exits
        if not line.startswith("listening") or time.monotonic() > deadline:
            raise RuntimeError(f"guide server did not start: {line!r} {process.stderr.read()}")
        yield NodeServer(process, int(line.split()[1]))
    finally:
        stop(process)


def stop(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
