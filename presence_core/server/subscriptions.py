"""Who watches what (protocol version 2), and the diffs each watcher is owed.

A version-2 connection is a :class:`Watcher`: it watches everything (``all``),
some teams, some users, or a mix; subscriptions add up. Every transition is
offered once to :meth:`Subscriptions.publish`, already encoded as JSON, and is
queued for each watcher that watches its user (by key, team or ``all``; once,
however many of its subscriptions match). :meth:`Subscriptions.due` then gives
each watcher with something queued one ``presenceDiff`` frame holding all of it,
in order, under the connection's next ``seq``: the server calls it once a tick,
so a client gets at most one diff a tick and none when nothing it watches changed.

Encoding is done once per transition (the change) and once per frame (a string
join), never once per change per watcher: a team of 200 watched by 200 clients
costs 200 encodings, not 40,000.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from presence_core import protocol
from presence_core.server.batching import FrameBatcher


@dataclass(eq=False)
class Watcher:
    """One version-2 connection: what it watches, its ``seq``, what it is owed."""

    sid: str
    eio_sid: str
    all: bool = False
    teams: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)  # user keys
    seq: int = 0  # of the last diff sent
    pending: list[str] = field(default_factory=list)  # encoded changes, in order
    out: FrameBatcher | None = None  # its WebSocket's writer, for diffs sent directly

    def watches(self, key: str, team: str | None) -> bool:
        return self.all or key in self.users or (team is not None and team in self.teams)


class Subscriptions:
    """The version-2 connections, indexed by what they watch."""

    MAX_USERS = 10_000  # user ids one connection may watch by id
    MAX_TEAMS = 1_000  # teams one connection may watch

    def __init__(self) -> None:
        self.watchers: dict[str, Watcher] = {}
        self._all: dict[Watcher, None] = {}  # ordered sets
        self._teams: dict[str, dict[Watcher, None]] = {}
        self._users: dict[str, dict[Watcher, None]] = {}
        self._dirty: dict[Watcher, None] = {}
        self.diffs = 0  # presenceDiff frames handed out
        self.direct = 0  # of which straight to the WebSocket's batcher (FrameBatcher.send_now)
        self.changes = 0  # changes queued, summed over watchers

    # --- connections and their subscriptions --------------------------------------------

    def add(self, sid: str, eio_sid: str, out: FrameBatcher | None = None) -> Watcher:
        watcher = Watcher(sid, eio_sid, out=out)
        self.watchers[sid] = watcher
        return watcher

    def remove(self, sid: str) -> None:
        watcher = self.watchers.pop(sid, None)
        if watcher is None:
            return
        self._all.pop(watcher, None)
        self._dirty.pop(watcher, None)
        for team in watcher.teams:
            self._drop(self._teams, team, watcher)
        for key in watcher.users:
            self._drop(self._users, key, watcher)

    def check(self, watcher: Watcher, sub: protocol.Subscription) -> None:
        """Refuse (ProtocolError) a subscription that would take a connection past
        what one may watch by id or by team."""
        users = len(watcher.users | {key for _wire, key in sub.users})
        teams = len(watcher.teams | set(sub.teams))
        if users > self.MAX_USERS:
            raise protocol.ProtocolError(
                f"{protocol.SUBSCRIBE}: a connection may watch at most {self.MAX_USERS} "
                "users by id (subscribe to their teams, or to all)"
            )
        if teams > self.MAX_TEAMS:
            raise protocol.ProtocolError(
                f"{protocol.SUBSCRIBE}: a connection may watch at most {self.MAX_TEAMS} teams"
            )

    def subscribe(self, watcher: Watcher, sub: protocol.Subscription) -> None:
        """Add ``sub`` to what ``watcher`` watches (call :meth:`check` first)."""
        if sub.all:
            watcher.all = True
            self._all[watcher] = None
        for team in sub.teams:
            watcher.teams.add(team)
            self._teams.setdefault(team, {})[watcher] = None
        for _wire, key in sub.users:
            watcher.users.add(key)
            self._users.setdefault(key, {})[watcher] = None

    def unsubscribe(self, watcher: Watcher, sub: protocol.Subscription) -> None:
        """Take ``sub`` away from what ``watcher`` watches (what it did not watch is
        ignored). Changes already queued are still delivered."""
        if sub.all:
            watcher.all = False
            self._all.pop(watcher, None)
        for team in sub.teams:
            if team in watcher.teams:
                watcher.teams.discard(team)
                self._drop(self._teams, team, watcher)
        for _wire, key in sub.users:
            if key in watcher.users:
                watcher.users.discard(key)
                self._drop(self._users, key, watcher)

    @staticmethod
    def _drop(index: dict[str, dict[Watcher, None]], name: str, watcher: Watcher) -> None:
        holders = index.get(name)
        if holders is not None:
            holders.pop(watcher, None)
            if not holders:
                del index[name]

    # --- changes and diffs --------------------------------------------------------------

    def publish(self, key: str, team: str | None, change: dict) -> int:
        """Queue one transition (a :func:`protocol.diff_change`) for every watcher
        of user ``key``; returns how many."""
        if not self.watchers:
            return 0
        targets: dict[Watcher, None] = dict(self._all)
        if team is not None and team in self._teams:
            targets.update(self._teams[team])
        if key in self._users:
            targets.update(self._users[key])
        if not targets:
            return 0
        encoded = json.dumps(change, separators=(",", ":"))
        dirty = self._dirty
        for watcher in targets:
            watcher.pending.append(encoded)
            dirty[watcher] = None
        self.changes += len(targets)
        return len(targets)

    def due(self) -> list[tuple[Watcher, str]]:
        """One ``presenceDiff`` per watcher with changes queued: ``(watcher, the
        Socket.IO event packet's text)``; each watcher's ``seq`` goes up by one."""
        frames = [(watcher, self._frame(watcher)) for watcher in self._dirty]
        self._dirty = {}
        self.diffs += len(frames)
        return frames

    def take(self, watcher: Watcher) -> str | None:
        """``watcher``'s diff now, when it has changes queued (a ``subscribe`` sends
        it before its acknowledgement, so the snapshot follows every diff)."""
        if self._dirty.pop(watcher, False) is None:
            self.diffs += 1
            return self._frame(watcher)
        return None

    @staticmethod
    def _frame(watcher: Watcher) -> str:
        watcher.seq += 1
        text = (
            f'2["{protocol.PRESENCE_DIFF}",{{"seq":{watcher.seq},"changes":['
            + ",".join(watcher.pending)
            + "]}]"
        )
        watcher.pending = []
        return text
