"""Protocol version 2 on the server: ``subscribe``, ``unsubscribe``, ``getUsersStatus``
and the tick that sends each watcher its ``presenceDiff``.

:class:`Watching` is the part of :class:`~presence_core.server.server.PresenceServer`
that answers version-2 clients; it reads the server's state, connections and options
and keeps nothing of its own (who watches what is
:mod:`~presence_core.server.subscriptions`). A subscribe answers from the present
users' team index (:class:`~presence_core.server.state.Roster`) with each user's entry
encoded once per change of the user; a tick's diff goes straight to the connection's
write batcher when engine.io holds nothing for it
(:meth:`~presence_core.server.batching.FrameBatcher.send_now`). Measured in
bench/bench_server_v2.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from presence_core import protocol
from presence_core.database import lookup
from presence_core.protocol import ProtocolError
from presence_core.server.state import User
from presence_core.server.subscriptions import Watcher

if TYPE_CHECKING:
    from presence_core.server.broadcast import Broadcaster
    from presence_core.server.cluster_state import ClusterState
    from presence_core.server.options import ServerOptions
    from presence_core.server.server import Conn, PresenceServer
    from presence_core.server.state import PresenceState
    from presence_core.server.subscriptions import Subscriptions

log = logging.getLogger("presence_core.server.server")


class Refused(ProtocolError):
    """A well-formed event this connection may not send (another user, an observer…)."""


class Encoded(str):
    """An acknowledgement already encoded as JSON text, which the server's packet class
    sends as it is (a ``subscribe`` answer is built from each user's cached entry text)."""


class Watching:
    """Version 2's events and diffs for one server (see the module's docstring)."""

    def __init__(self, server: PresenceServer) -> None:
        self.server = server

    # the server's parts it works with (the state is the cluster's mirror on a node)
    @property
    def state(self) -> PresenceState | ClusterState:
        return self.server.state

    @property
    def options(self) -> ServerOptions:
        return self.server.options

    @property
    def conns(self) -> dict:
        return self.server.conns

    @property
    def subscriptions(self) -> Subscriptions:
        return self.server.subscriptions

    @property
    def broadcaster(self) -> Broadcaster:
        return self.server.broadcaster

    def _now(self) -> datetime:
        return self.server._now()

    def _watcher(self, conn: Conn, event: str) -> Watcher:
        if conn.watcher is None:
            raise Refused(
                f"{event}: a protocol version 2 event; connect with protocol: 2 in the auth payload"
            )
        return conn.watcher

    def _own_team(self, conn: Conn, event: str) -> str | None:
        """The team this connection may watch: None when it may watch everything (an
        observer, or the policy "all"), else its announced user's team."""
        if conn.identity is not None:
            if conn.identity.expires_at <= time.time():
                raise Refused(f"{event}: token expired; reconnect with a new one")
            if conn.identity.observer:
                return None
        if self.options.watch_policy == "all":
            return None
        team = self.state.team_of(conn.key) if conn.key is not None else None
        if team is None:
            raise Refused(
                f"{event}: this server lets a user watch only their own team; announce a "
                "user with a team (userOnline) first"
            )
        return team

    async def _check_rights(
        self, conn: Conn, event: str, sub: protocol.Subscription, looked_up: dict
    ) -> None:
        """Refuse what the watch policy does not allow this connection."""
        team = self._own_team(conn, event)
        if team is None:
            return
        if sub.all:
            raise Refused(f"{event}: this server lets a user watch only their own team, not all")
        for other in sub.teams:
            if other != team:
                raise Refused(f"{event}: this server lets a user watch only their own team")
        for _wire, key in sub.users:
            if self._team_of(key, looked_up) != team:
                raise Refused(
                    f"{event}: user {key[:64]!r} is not in your team (this server lets a "
                    "user watch only their own team)"
                )

    def _team_of(self, key: str, looked_up: dict) -> str | None:
        user = self.state.users.get(key) or self.state.departed.get(key)
        if user is not None and user.team is not None:
            return user.team
        stored = looked_up.get(key)
        return stored.team if stored is not None else None

    async def _look_up(self, keys: list[str]) -> dict:
        """What the database knows of ``keys`` not present here: one query, in a
        thread (never one per id); {} without a database or when it cannot answer."""
        if self.server.cluster is not None:  # who left lately, as the cluster remembers
            await self.server.cluster.state.recall(keys)
        wanted = [key for key in keys if key not in self.state.users]
        if not wanted or self.server.engine is None:
            return {}
        try:
            return await asyncio.to_thread(lookup.stored_users, self.server.engine, wanted)
        except Exception as exc:  # the database down: answer from memory
            log.warning("getUsersStatus: cannot read the database (%s)", str(exc)[:200])
            return {}

    def _user_state(self, wire: protocol.UserId, key: str, looked_up: dict) -> dict:
        """One user's state: present (memory), recently gone (memory), stored, unknown."""
        user = self.state.users.get(key)
        if user is not None:
            return self._present_state(user)
        stored = looked_up.get(key)
        gone = self.state.departed.get(key)
        if gone is not None and (stored is None or not stored.hidden):
            return protocol.user_state(
                wire,
                protocol.OFFLINE,
                gone.last_seen,
                status_since=gone.last_seen,
                team=gone.team,
                user_type=gone.user_type,
                user_name=gone.user_name,
            )
        if stored is not None:
            return protocol.user_state(
                wire,
                protocol.OFFLINE,  # not connected here: offline, whatever was stored
                stored.last_seen,
                status_since=None,
                team=stored.team,
                user_type=stored.user_type,
                user_name=stored.user_name,
            )
        return protocol.user_state(wire, protocol.OFFLINE, None)

    def _present_entry(
        self,
        user: User,
        last_seen_json: str,
        live: Callable[[str], bool],
        is_live: Callable[[User, Callable[[str], bool]], bool],
    ) -> str:
        """The JSON text of :meth:`_present_state` for ``user``, ``lastSeen`` given as JSON
        when the user is live. Everything but ``lastSeen`` is encoded once per change of
        the user and kept on it: in a shift start each user's entry is sent to every
        teammate who subscribes after them (measured: building and encoding each entry
        for every acknowledgement was a tenth of the server's CPU)."""
        fields = user.__dict__  # (team is a property: its value is kept as _team)
        version = (
            fields["status"],
            fields["status_since"],
            fields.get("_team"),
            fields["user_type"],
            fields["user_name"],
        )
        cached = user.entry
        if cached is None or cached[0] != version:
            state = protocol.user_state(
                user.wire_id,
                user.status,
                None,
                status_since=user.status_since,
                team=user.team,
                user_type=user.user_type,
                user_name=user.user_name,
            )
            head, tail = json.dumps(state, separators=(",", ":")).split('"lastSeen":null', 1)
            cached = user.entry = (version, head + '"lastSeen":', tail)
        if not is_live(user, live):
            last_seen_json = json.dumps(protocol.iso_utc(user.last_seen))
        return cached[1] + last_seen_json + cached[2]

    def _present_state(self, user: User) -> dict:
        live = self.state.live(user, self.conns.__contains__)
        return protocol.user_state(
            user.wire_id,
            user.status,
            self._now() if live else user.last_seen,
            status_since=user.status_since,
            team=user.team,
            user_type=user.user_type,
            user_name=user.user_name,
        )

    async def subscribe(self, conn: Conn, payload: object) -> dict | str:
        """``subscribe``: add to what the connection watches; the acknowledgement is the
        state of everything it now watches, at this moment's ``seq``."""
        watcher = self._watcher(conn, protocol.SUBSCRIBE)
        sub = protocol.parse_subscription(payload, protocol.SUBSCRIBE)
        self.subscriptions.check(watcher, sub)
        keys = [key for _wire, key in sub.users]
        looked_up = await self._look_up(keys) if keys else {}
        await self._check_rights(conn, protocol.SUBSCRIBE, sub, looked_up)
        if conn.sid not in self.conns:  # gone while the database answered
            return {"ok": False, "error": "not connected"}
        pending = self.subscriptions.take(watcher)
        if pending is not None:  # what is owed first: the snapshot comes after every diff
            await self.broadcaster.send_text(watcher.eio_sid, pending)
        # from here on nothing awaits: the snapshot and seq are one moment's, and every
        # later change reaches the client in a diff
        self.subscriptions.subscribe(watcher, sub)
        now = self._now()
        present = (
            self.state.users.values()
            if watcher.all
            else self.state.users.watched(watcher.teams, watcher.users)
        )
        now_json = json.dumps(protocol.iso_utc(now))
        live = self.conns.__contains__
        is_live = self.state.live
        users = [self._present_entry(user, now_json, live, is_live) for user in present]
        for wire, key in sub.users:
            if key not in self.state.users:
                users.append(
                    json.dumps(self._user_state(wire, key, looked_up), separators=(",", ":"))
                )
        # the text json.dumps would make of {"ok": True, "seq": ..., "users": [...]}
        return Encoded(f'{{"ok":true,"seq":{watcher.seq},"users":[{",".join(users)}]}}')

    async def unsubscribe(self, conn: Conn, payload: object) -> dict:
        """``unsubscribe``: take away from what the connection watches."""
        watcher = self._watcher(conn, protocol.UNSUBSCRIBE)
        sub = protocol.parse_subscription(payload, protocol.UNSUBSCRIBE)
        self.subscriptions.unsubscribe(watcher, sub)
        return {"ok": True, "seq": watcher.seq}

    async def get_users_status(self, conn: Conn, payload: object) -> dict:
        """``getUsersStatus``: each user's status and ``lastSeen``, from memory or one
        database query (any protocol version)."""
        ids = protocol.parse_get_users_status(payload)
        keys = [key for _wire, key in ids]
        looked_up = await self._look_up(keys)
        await self._check_rights(
            conn, protocol.GET_USERS_STATUS, protocol.Subscription(users=ids), looked_up
        )
        return {"ok": True, "users": [self._user_state(wire, key, looked_up) for wire, key in ids]}

    async def seq_jump(self) -> None:
        """This node missed transitions (cut off from the cluster's stream past its
        window): every version-2 watcher's next diff skips a ``seq``, which tells the
        client to subscribe again for a fresh snapshot."""
        for watcher in self.subscriptions.watchers.values():
            watcher.seq += 1

    async def send_diffs(self) -> None:
        """Every tick, one presenceDiff to each watcher whose subscriptions changed.

        The ticks keep to a fixed grid (:func:`next_tick`) rather than sleeping a full
        interval after each one: sleeping after the work added the tick's own sending
        and the event loop's lag to every period, and in a 2,000-user shift start
        (bench/bench_server_v2.py) the diffs then came 290-380 ms apart (median)
        instead of 200, each change waiting that much longer for its tick."""
        loop = asyncio.get_running_loop()
        interval = self.options.diff_interval
        due = loop.time()
        while True:
            due = next_tick(due, loop.time(), interval)
            await asyncio.sleep(due - loop.time())
            sockets = self.server.sio.eio.sockets
            for watcher, text in self.subscriptions.due():
                out = watcher.out  # straight to the WebSocket when nothing can be overtaken
                if out is not None and out.send_now("4" + text, sockets.get(watcher.eio_sid)):
                    self.subscriptions.direct += 1
                    continue
                try:
                    await self.broadcaster.send_text(watcher.eio_sid, text)
                except Exception:  # one socket's trouble must not stop the others' diffs
                    log.exception("sending presenceDiff to %s failed", watcher.sid)


def next_tick(due: float, now: float, interval: float) -> float:
    """When the tick after the one due at ``due`` is due, it being ``now``: one
    ``interval`` later, on a fixed grid, so a late tick does not delay the ones after
    it; a tick more than an interval late skips to the next point of the grid still
    ahead, never two ticks at once (a client gets at most one diff per tick)."""
    due += interval
    if due < now:
        due += math.ceil((now - due) / interval) * interval
    return due
