"""The cluster's Lua scripts, and how a node calls them: the only code that changes
the cluster's state in Redis.

Each script (``presence_core/server/lua/NAME.lua``, with ``common.lua`` prepended)
runs atomically inside Redis, so every transition is decided once, by the script that
makes it, and appended to the stream ``presence:events`` in the same step. redis-py's
``Script`` runs them by EVALSHA, loading them once per server and again on NOSCRIPT
(a restarted Redis). Every answer is a JSON object: ``r`` is ``"t"`` (a transition
was made: ``id`` is its stream entry), ``"n"`` (no transition), ``"g"`` (the
connection did not count: nothing changed), ``"ok"``, or a marker the node must handle
before anything else: ``"reaped"`` (the cluster took this node as dead) or ``"epoch"``
(Redis lost its data). The user scripts also answer the user's state as the cluster
now has it (``present``, ``status``, ``since``, ``lc`` = time of the last transition,
names), so the node that made a change sees it at once. docs/cluster.md lists keys
and scripts.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

__all__ = ["SCRIPTS", "ClusterScripts"]

SCRIPTS = ("register", "alive", "join", "part", "status", "reap", "restore", "settle")


def _source(name: str) -> str:
    return resources.files("presence_core.server").joinpath("lua", f"{name}.lua").read_text()


class ClusterScripts:
    """The scripts bound to one Redis client; every method returns the parsed answer.

    ``maxlen``: the stream's approximate length cap (XADD MAXLEN ~). Times are
    milliseconds since the epoch, by the node's clock (the database's).
    """

    def __init__(self, client: aioredis.Redis, maxlen: int) -> None:
        self.maxlen = maxlen
        common = _source("common")
        self._scripts = {
            name: client.register_script(common + "\n" + _source(name)) for name in SCRIPTS
        }
        self.calls = 0  # script runs (each one Redis round trip)

    async def _run(self, name: str, epoch: str, node: str, at: int, *extra: object) -> dict:
        args: list[Any] = [epoch, node, int(at), self.maxlen, *extra]
        self.calls += 1
        answer = json.loads(await self._scripts[name](keys=[], args=args))
        for key in ("reaped",):  # cjson encodes an empty list as {}
            if answer.get(key) == {}:
                answer[key] = []
        return answer

    async def register(self, node: str, at: int, epoch: str, *, fresh: bool) -> dict:
        """Create the epoch (``epoch``) if none exists; the node is alive. ``fresh``: a
        new process, so connections an earlier one of this id left move to a ghost
        node (``ghost`` in the answer) that the reaper takes after the timeout."""
        return await self._run("register", epoch, node, at, "fresh" if fresh else "")

    async def alive(self, epoch: str, node: str, at: int, timeout_ms: int = 15_000) -> dict:
        """The node's sign of life; ``nodes``: how many gave one within ``timeout_ms``."""
        return await self._run("alive", epoch, node, at, int(timeout_ms))

    async def join(
        self,
        epoch: str,
        node: str,
        at: int,
        sid: str,
        key: str,
        wire: object,
        names: dict,
        reason: str = "",
        inferred: bool = False,
    ) -> dict:
        """``reason`` of the online transition (default userOnline); ``inferred``: its
        time is not known (a reconciliation)."""
        names_json = _json(names) if names else ""
        flag = "1" if inferred else "0"
        return await self._run(
            "join", epoch, node, at, sid, key, _json(wire), names_json, reason, flag
        )

    async def part(
        self,
        epoch: str,
        node: str,
        at: int,
        sid: str,
        key: str,
        reason: str,
        inferred: bool = False,
    ) -> dict:
        flag = "1" if inferred else "0"
        return await self._run("part", epoch, node, at, sid, key, reason, flag)

    async def status(
        self,
        epoch: str,
        node: str,
        at: int,
        sid: str,
        key: str,
        status: str,
        reason: str,
        inferred: bool = False,
    ) -> dict:
        flag = "1" if inferred else "0"
        return await self._run("status", epoch, node, at, sid, key, status, reason, flag)

    async def reap(self, epoch: str, node: str, at: int, timeout_ms: int) -> dict:
        return await self._run("reap", epoch, node, at, int(timeout_ms))

    async def restore(self, epoch: str, node: str, at: int, conns: list[dict]) -> dict:
        return await self._run("restore", epoch, node, at, _json(conns))

    async def settle(self, epoch: str, node: str, at: int, users: list[dict], good_ms: int) -> dict:
        return await self._run("settle", epoch, node, at, _json(users), int(good_ms))


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
