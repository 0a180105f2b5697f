"""Several presence servers, nodes of one cluster, in one event loop, for tests.

Each node is a real :class:`PresenceServer` with ``redis_url`` set, listening on its
own free loopback port; the clients are real python-socketio clients
(:class:`tests.server_harness.Client`); Redis is the real ``redis_server`` fixture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from presence_core.server import PresenceServer, ServerOptions
from tests.server_harness import LoopThread, RunningServer, _call
from tests.waiting import wait_for


class Cluster:
    """The running nodes (``nodes[i]`` a RunningServer) and their shared loop."""

    def __init__(self, loop: LoopThread, redis_url: str, engine: Any, options: dict) -> None:
        self.loop, self.redis_url, self.engine, self.options = loop, redis_url, engine, options
        self.nodes: list[RunningServer] = []

    def add_node(self, node_id: str | None = None, **overrides: Any) -> RunningServer:
        options = {**self.options, **overrides}
        options.setdefault("node_id", node_id or f"n{len(self.nodes) + 1}")
        server = PresenceServer(self.engine, ServerOptions(redis_url=self.redis_url, **options))
        port = self.loop.run(server.start("127.0.0.1", 0), timeout=20)
        node = RunningServer(self.loop, server, port)
        self.nodes.append(node)
        return node

    def stop_node(self, node: RunningServer) -> None:
        for client in node.clients:
            client.close()
        node.clients.clear()
        self.loop.run(node.server.stop(), timeout=20)

    def online_keys(self, node: RunningServer) -> set[str]:
        return set(self.loop.run(_call(node.server.snapshot)))

    def wait_agree(self, expected: set[str], timeout: float = 15) -> None:
        """Until every node's mirror holds exactly ``expected`` present users."""
        live = [n for n in self.nodes if not n.server.closing]
        wait_for(
            lambda: all(self.online_keys(n) == expected for n in live),
            timeout,
            what=f"every node to see {sorted(expected)} present: "
            + str([sorted(self.online_keys(n)) for n in self.nodes]),
        )

    def health(self, node: RunningServer) -> dict:
        return self.loop.run(_call(node.server.health))


@contextmanager
def running_cluster(
    redis_url: str, nodes: int = 2, engine: Any = None, **options: Any
) -> Iterator[Cluster]:
    """``nodes`` nodes of one cluster on free loopback ports (small test durations)."""
    options.setdefault("grace", 0.3)
    options.setdefault("flush_interval", 0.05)
    options.setdefault("diff_interval", 0.05)
    options.setdefault("node_timeout", 3.0)
    options.setdefault("redis_timeout", 0.5)
    loop = LoopThread()
    cluster = Cluster(loop, redis_url, engine, options)
    try:
        for _ in range(nodes):
            cluster.add_node()
        yield cluster
    finally:
        for node in cluster.nodes:
            if not node.server.closing:
                with contextlib.suppress(Exception):
                    cluster.stop_node(node)
        loop.close()
