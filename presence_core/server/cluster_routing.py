"""Which node holds a session: the route tag at the start of Engine.IO session ids.

A polling client's later requests, and its upgrade to a WebSocket, must reach the
node that holds its session. In a cluster every Engine.IO (and Socket.IO) session id
begins with the node's route tag and a dot, ``n1.dGhpcyBpcyBh...``, so a load
balancer can route on the ``sid`` query parameter's prefix without cookies
(``deploy/haproxy.cfg``). The tag is the node id with every character outside
``[A-Za-z0-9_-]`` replaced by ``_``: node ``n1`` tags ``n1.``, node
``10.0.0.5:4100`` tags ``10_0_0_5_4100.``. Engine.IO's own ids never contain a dot
(URL-safe base64), so the first dot ends the tag.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

__all__ = ["default_node_id", "route_tag", "tag_session_ids"]

_OUTSIDE = re.compile(r"[^A-Za-z0-9_-]")


def default_node_id(host: str, port: int) -> str:
    """A node's id when none is given: ``host:port`` as listening; for a wildcard
    address (``0.0.0.0``, ``::``), this machine's name instead of the host, so nodes on
    several machines listening on the same port do not share an id."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


def route_tag(node_id: str) -> str:
    """The route tag of ``node_id`` (without the dot)."""
    return _OUTSIDE.sub("_", node_id)


def tag_session_ids(eio: object, tag: Callable[[], str]) -> None:
    """Make the Engine.IO server ``eio`` (python-engineio's ``AsyncServer``) begin
    every session id it generates with ``tag() + "."``. ``tag`` is called per id, so
    a node id known only once listening (``host:port`` with port 0) still applies."""
    plain = eio.generate_id  # type: ignore[attr-defined]

    def generate_id() -> str:
        return f"{tag()}.{plain()}"

    eio.generate_id = generate_id  # type: ignore[attr-defined]
