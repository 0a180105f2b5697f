"""Who is present, and each change of it: the server's state, its times, its records.

:class:`PresenceState` knows users, the connections counting for each (by id), and
turns every change of a user's status into one transition: dated, written through
the database writer, broadcast. It knows nothing of sockets or payloads; the
server (:mod:`presence_core.server.server`) decides which connection speaks for
whom and calls it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from presence_core import protocol
from presence_core.database import storage
from presence_core.protocol import OFFLINE, ONLINE
from presence_core.server.writer import DatabaseWriter

_MILLISECOND = timedelta(milliseconds=1)
# How far a transition's time may run ahead of now when two of a user's fall in the
# same millisecond and the second is moved one later: changes that would go further
# are refused (see PresenceState.admits), so stored times stay honest.
MAX_AHEAD = timedelta(milliseconds=5)


@dataclass(eq=False)
class User:
    """A present user: status, names, and the connections that count for them.

    ``team`` is a property (below): a user in a :class:`Roster` who changes team moves
    in the roster's team index at once, wherever the change is made."""

    key: str
    wire_id: protocol.UserId
    status: str
    status_since: datetime
    last_seen: datetime
    user_type: str | None = None
    user_name: str | None = None
    team: str | None = None
    conns: set[str] = field(default_factory=set)  # live connections, and ones in grace
    left_at: datetime | None = None  # when the latest connection stopped counting
    roster: Roster | None = field(default=None, repr=False)  # the one it is present in
    order: int = field(default=0, repr=False)  # its place in the roster (arrival)
    entry: tuple | None = field(default=None, repr=False)  # its subscribe entry, encoded


def _get_team(user: User) -> str | None:
    return user.__dict__.get("_team")


def _set_team(user: User, team: str | None) -> None:
    roster = user.__dict__.get("roster")
    if roster is not None and user.__dict__.get("_team") != team:
        roster._unindex(user)
        user.__dict__["_team"] = team
        roster._index(user)
    else:
        user.__dict__["_team"] = team


User.team = property(_get_team, _set_team)  # type: ignore[assignment]


class Roster(dict[str, User]):
    """The present users by key (a dict, in arrival order), and by team.

    A ``subscribe`` to a team answers with the team's present users: with 2,000 users
    logging in and each subscribing to its team, a scan of everyone per subscribe
    was the largest of our own costs in the shift start (bench/bench_server_v2.py).
    One index for a node alone and for a cluster node's mirror: users enter with
    ``roster[key] = user``, leave with ``del``/``pop``, and change team by setting
    ``user.team``; nothing else may add or remove (the other dict methods that
    would are refused)."""

    def __init__(self) -> None:
        super().__init__()
        self._teams: dict[str | None, dict[User, None]] = {}  # ordered sets, by arrival
        self._arrivals = 0

    def __setitem__(self, key: str, user: User) -> None:
        old = self.get(key)
        if old is user:
            return
        if old is not None:
            self._leave(old)
            user.order = old.order  # a dict keeps a replaced key's place
        else:
            self._arrivals += 1
            user.order = self._arrivals
        super().__setitem__(key, user)
        user.roster = self
        self._index(user)

    def __delitem__(self, key: str) -> None:
        user = self[key]
        super().__delitem__(key)
        self._leave(user)

    _MISSING = object()

    def pop(self, key: str, default: object = _MISSING) -> User:  # type: ignore[override]
        user = self.get(key)
        if user is None:
            if default is Roster._MISSING:
                raise KeyError(key)
            return default  # type: ignore[return-value]
        del self[key]
        return user

    def _refused(self, *args: object, **kwargs: object) -> None:
        raise TypeError("a Roster changes only by [key] = user, del and pop")

    update = setdefault = popitem = clear = __ior__ = _refused  # type: ignore[assignment]

    def team(self, team: str) -> list[User]:
        """The present users of ``team``, in arrival order."""
        members = self._teams.get(team)
        return list(members) if members else []

    def watched(self, teams: Iterable[str], keys: Iterable[str]) -> list[User]:
        """The present users in any of ``teams`` or with one of ``keys``, once each, in
        arrival order: O(what matches), not O(everyone)."""
        found: dict[User, None] = {}
        sources = 0
        for team in teams:
            members = self._teams.get(team)
            if members:
                found.update(members)
                sources += 1
        get = self.get
        for key in keys:
            user = get(key)
            if user is not None:
                found[user] = None
                sources += 2  # a set's order is not arrival order
        if sources > 1:
            return sorted(found, key=_arrival)
        return list(found)

    def _index(self, user: User) -> None:
        members = self._teams.setdefault(user.team, {})
        last = next(reversed(members), None) if members else None
        members[user] = None
        if last is not None and last.order > user.order:  # joined a team late: re-order
            self._teams[user.team] = dict.fromkeys(sorted(members, key=_arrival))

    def _unindex(self, user: User) -> None:
        members = self._teams.get(user.team)
        if members is not None:
            members.pop(user, None)
            if not members:
                del self._teams[user.team]

    def _leave(self, user: User) -> None:
        self._unindex(user)
        user.roster = None


def _arrival(user: User) -> int:
    return user.order


def sighting_of(user: User) -> storage.Sighting:
    """The row that stores a user's ``last_seen`` and names (alone or in a cluster)."""
    return storage.Sighting(
        user_id=user.key,
        last_seen=user.last_seen,
        user_type=user.user_type,
        user_name=user.user_name,
        team=user.team,
    )


def online_list(users: Iterable[User], now: datetime, live: Callable[[User], bool]) -> list[dict]:
    """``onlineUsersList`` entries for ``users``: ``lastSeen`` is ``now`` for a user
    with a live connection (``live(user)``), else their last sign of life. One
    definition for a node alone and in a cluster."""
    return [
        protocol.online_user(
            u.wire_id,
            u.status,
            now if live(u) else u.last_seen,
            u.user_type,
            u.user_name,
            u.team,
            u.status_since,
        )
        for u in users
    ]


class PresenceState:
    """The present users and every transition between statuses.

    ``publish(user, status, moment, reason)`` tells the clients of each transition
    (the server's fan-out: the guide's broadcast, version 2's diffs); ``writer`` (None: no
    database) stores transitions and sightings; ``now()`` is the time transitions
    are dated by (the database's clock, to the millisecond); ``grace`` is the
    server's grace period, which bounds how long a departed user's last time must
    be remembered.
    """

    MAX_DEPARTED = 10_000  # users remembered after they left (about 0.5 KiB each)

    def __init__(
        self,
        publish: Callable[[User, str, datetime, str], Awaitable[None]],
        writer: DatabaseWriter | None,
        *,
        now: Callable[[], datetime],
        source: str,
        grace: float,
    ) -> None:
        self.now = now
        self.users = Roster()
        self.transitions = 0
        self.broadcasts = 0
        self._publish = publish
        # users who left lately, newest last: a status query answers from memory what
        # the database may not have been told yet (its writes are batched)
        self.departed: OrderedDict[str, User] = OrderedDict()
        self._writer = writer
        self._source = source
        self._grace = grace
        self._last_change: dict[str, datetime] = {}  # user key -> last transition's time
        self._prune_at = 10_000

    # --- changes --------------------------------------------------------------------

    def admits(self, key: str, now: datetime) -> bool:
        """Whether a transition of user ``key`` at ``now`` keeps within MAX_AHEAD of
        now once it is moved past the user's previous one."""
        previous = self._last_change.get(key)
        return previous is None or previous + _MILLISECOND <= now + MAX_AHEAD

    async def join(
        self,
        sid: str,
        key: str,
        wire_id: protocol.UserId,
        now: datetime,
        names: protocol.UserOnline | None,
    ) -> None:
        """Connection ``sid`` counts for user ``key``; if the user was not present, they
        come online (a transition)."""
        user = self.users.get(key)
        if user is not None:  # already present: no transition, no broadcast
            user.conns.add(sid)
            user.last_seen = max(user.last_seen, now)
            self.sighting(user)
            return
        self.departed.pop(key, None)
        user = User(key=key, wire_id=wire_id, status=ONLINE, status_since=now, last_seen=now)
        if names is not None:
            user.user_type, user.user_name, user.team = names.user_type, names.user_name, names.team
        user.conns.add(sid)
        self.users[key] = user
        await self._announce(user, ONLINE, now, protocol.USER_ONLINE)

    def rename(self, key: str, names: protocol.UserOnline) -> None:
        """Take the names a present user announced again (those given)."""
        user = self.users.get(key)
        if user is not None:
            for name in ("user_type", "user_name", "team"):
                if getattr(names, name) is not None:
                    setattr(user, name, getattr(names, name))

    async def part(self, key: str | None, sid: str, when: datetime, reason: str) -> None:
        """Connection ``sid`` no longer counts for user ``key`` (since ``when``); when
        no other does, the user goes offline (a transition)."""
        user = self.users.get(key) if key is not None else None
        if user is None or sid not in user.conns:
            return
        user.conns.discard(sid)
        user.left_at = when if user.left_at is None else max(user.left_at, when)
        if user.conns:
            return
        del self.users[user.key]
        moment = max(user.left_at, user.status_since)
        user.last_seen = moment
        self.departed[user.key] = user
        if len(self.departed) > self.MAX_DEPARTED:
            self.departed.popitem(last=False)
        await self._announce(user, OFFLINE, moment, reason)

    async def change(self, user: User, status: str, now: datetime, reason: str) -> None:
        """A present user's new status (a transition)."""
        user.status, user.status_since = status, now
        user.last_seen = max(user.last_seen, now)
        await self._announce(user, status, now, reason)

    def team_of(self, key: str) -> str | None:
        """The team of present user ``key`` (None: unknown, or not present)."""
        user = self.users.get(key)
        return user.team if user is not None else None

    def status_of(self, key: str) -> str | None:
        """User ``key``'s status (None: not present)."""
        user = self.users.get(key)
        return user.status if user is not None else None

    async def set_status(self, sid: str, key: str, status: str, now: datetime, reason: str) -> None:
        """User ``key``'s new status, from connection ``sid`` (which counts for them)."""
        user = self.users.get(key)
        if user is not None and user.status != status:
            await self.change(user, status, now, reason)

    def seen(self, key: str, now: datetime, *, sighting: bool = True) -> User:
        """A sign of life from a present user: ``last_seen`` advances."""
        user = self.users[key]
        user.last_seen = max(user.last_seen, now)
        if sighting:
            self.sighting(user)
        return user

    def sighting(self, user: User) -> None:
        """Store the user's ``last_seen`` and names (no transition)."""
        if self._writer is not None:
            self._writer.add_sighting(sighting_of(user))

    async def _announce(self, user: User, status: str, moment: datetime, reason: str) -> None:
        """Record a transition and broadcast it to every client.

        A user's transitions get strictly increasing times (bumped by a millisecond
        where two fall in the same one), so their order survives the database.
        """
        previous = self._last_change.get(user.key)
        if previous is not None and moment <= previous:
            moment = previous + _MILLISECOND
        self._last_change[user.key] = moment
        if len(self._last_change) > self._prune_at:
            self._forget_old_changes()
        if status != OFFLINE:
            user.status_since = moment
        user.last_seen = max(user.last_seen, moment)
        self.transitions += 1
        if self._writer is not None:
            self._writer.add_transition(
                storage.Transition(
                    user_id=user.key,
                    status=status,
                    occurred_at=moment,
                    received_at=self.now(),
                    reason=reason,
                    source=self._source,
                    user_type=user.user_type,
                    user_name=user.user_name,
                    team=user.team,
                )
            )
        self.broadcasts += 1
        await self._publish(user, status, moment, reason)

    def _forget_old_changes(self) -> None:
        """Keep the per-user last-change times only where they can still matter: a new
        transition is never dated before the user's current status began (see
        :meth:`part`), so only the last moments of users who left can collide."""
        horizon = self.now() - timedelta(seconds=self._grace + 5)
        self._last_change = {
            key: moment
            for key, moment in self._last_change.items()
            if moment > horizon or key in self.users
        }
        self._prune_at = max(10_000, 2 * len(self._last_change))  # amortised O(1)

    # --- reading --------------------------------------------------------------------

    def live(self, user: User, live: Callable[[str], bool]) -> bool:
        """Whether one of ``user``'s connections is live (``live(sid)``), not only in grace.

        (``map``, not a generator: it is asked for every entry of every subscribe
        snapshot.)"""
        return any(map(live, user.conns))

    def online_users(self, live: Callable[[str], bool]) -> list[dict]:
        """The ``onlineUsersList`` payload: every present user.

        ``lastSeen`` is now for a user with a live connection (``live(sid)``: the
        server sees them; engine.io's pings vouch for it), else the last sign of life
        (a user whose connections are all in their grace period); ``statusSince``
        says when the current status began.
        """
        return online_list(self.users.values(), self.now(), lambda u: self.live(u, live))

    def snapshot(self) -> dict[str, tuple[str, int]]:
        """``{user key: (status, connections counting for it)}``."""
        return {key: (u.status, len(u.conns)) for key, u in self.users.items()}
