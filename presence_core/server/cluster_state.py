"""Who is present in the whole cluster, as one node sees it: :class:`ClusterState`.

The server uses it in place of :class:`~presence_core.server.state.PresenceState`
(same calls), so protocol handling does not care whether it runs alone. The truth is
in Redis; every change goes through a script (:mod:`.cluster_scripts`) that decides
the transition once for the whole cluster and appends it to the stream. This node
keeps a *mirror* of the present users, updated from each script's answer (so the
node that made a change sees it at once) and from the stream (everyone else's
changes); each user's entries carry the time of their last transition, strictly
increasing, so applying one twice changes nothing. Clients hear of transitions only
through the stream (:mod:`.cluster_stream`), which makes each node deliver each
transition once, its own included.

It also keeps the node's side of failures: operations Redis could not take wait in
the :class:`~.cluster_outbox.ClusterOutbox`; a node the cluster reaped (it froze)
registers again and re-joins the connections it still holds; a Redis that lost its
data is restored from them (docs/cluster.md, "Failures").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from presence_core import protocol
from presence_core.database import storage
from presence_core.protocol import OFFLINE
from presence_core.server.cluster_link import ClusterLink, RedisUnavailable
from presence_core.server.cluster_outbox import ClusterOutbox, Op
from presence_core.server.state import MAX_AHEAD, Roster, User, online_list, sighting_of
from presence_core.server.writer import DatabaseWriter

log = logging.getLogger(__name__)

__all__ = ["ClusterState", "from_ms", "to_ms"]

_RESTORE_CHUNK = 500


_EPOCH0 = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(moment: datetime) -> int:
    """``moment`` (timezone-aware) in whole milliseconds since 1970 (cut, not rounded)."""
    return (moment - _EPOCH0) // _MS


def from_ms(ms: int | str) -> datetime:
    return _EPOCH0 + int(ms) * _MS


def _wire(text: str | None, key: str) -> protocol.UserId:
    """The wire id (JSON text, as the guide's ids may be numbers) of user ``key``."""
    if not text:
        return key
    try:
        value = json.loads(text)
    except ValueError:
        return key
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else key


class ClusterState:
    """The cluster's present users (a mirror) and this node's changes to them.

    ``publish(user, status, moment, reason)`` is the server's fan-out, called by
    :meth:`deliver` for every stream entry; ``writer`` receives sightings (the
    cluster's transitions are recorded by :mod:`.cluster_recorder`); ``now`` the
    node's clock (the database's, to the ms); ``settle_after``: how long after Redis
    came back empty users nobody restored are settled offline (the node timeout).
    """

    MAX_DEPARTED = 10_000

    def __init__(
        self,
        link: ClusterLink,
        publish: Callable[[User, str, datetime, str], Awaitable[None]],
        writer: DatabaseWriter | None,
        *,
        now: Callable[[], datetime],
        settle_after: float,
        source: str = "server",
        outbox_limit: int = 100_000,
    ) -> None:
        self.link = link
        self.now = now
        self.users = Roster()  # the mirror: what this node's clients are told
        self.departed: OrderedDict[str, User] = OrderedDict()
        self.transitions = 0  # decided by this node's scripts
        self.broadcasts = 0  # stream entries delivered to this node's clients
        self.outbox = ClusterOutbox(outbox_limit)
        self.settle_after = settle_after
        self.source = source
        self.publish = publish  # the server's fan-out
        self._writer = writer
        self._version: dict[str, int] = {}  # user key -> time (ms) of the last told transition
        # user key -> (last transition ms, present, status, team) from script answers
        # the stream has not brought yet
        self._ahead: dict[str, tuple[int, bool, str | None, str | None]] = {}
        self._local: dict[str, set[str]] = {}  # user key -> this node's sids counting
        self._conns: dict[str, tuple[str, protocol.UserId, dict]] = {}  # sid -> key, wire, names
        self.confirmed: dict[str, str] = {}  # sid -> key: this node's connections Redis holds
        self._pending_status: dict[str, str] = {}  # user key -> status waiting in the outbox
        self._prune_at = 20_000
        self._recovery = asyncio.Lock()
        self.unfinished: str | None = None  # a recovery Redis interrupted
        # what the first attempt of an unfinished restore saw: the last good moment
        # and the mirror's present users then
        self._restore_from: tuple[int, dict[str, User]] | None = None
        self._draining = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.recoveries = {"reaped": 0, "epoch": 0}

    # --- what the server calls ----------------------------------------------------------

    def admits(self, key: str, now: datetime) -> bool:
        known = self._ahead.get(key)
        previous = max(self._version.get(key, -1), known[0] if known is not None else -1)
        return previous < 0 or from_ms(previous + 1) <= now + MAX_AHEAD

    async def join(
        self,
        sid: str,
        key: str,
        wire_id: protocol.UserId,
        now: datetime,
        names: protocol.UserOnline | None,
    ) -> None:
        given = {}
        if names is not None:
            for field, attr in (("type", "user_type"), ("name", "user_name"), ("team", "team")):
                if getattr(names, attr) is not None:
                    given[field] = getattr(names, attr)
        self._local.setdefault(key, set()).add(sid)
        old = self._conns.get(sid)
        merged = {**old[2], **given} if old is not None and old[0] == key else given
        self._conns[sid] = (key, wire_id, merged)
        await self._submit(Op("join", to_ms(now), sid, key, (wire_id, given)))
        user = self.users.get(key)
        if user is not None:
            user.last_seen = max(user.last_seen, now)
            self.sighting(user)

    def rename(self, key: str, names: protocol.UserOnline) -> None:
        user = self.users.get(key)
        if user is not None:
            for name in ("user_type", "user_name", "team"):
                if getattr(names, name) is not None:
                    setattr(user, name, getattr(names, name))

    async def part(self, key: str | None, sid: str, when: datetime, reason: str) -> None:
        if key is None:
            return
        sids = self._local.get(key)
        if sids is None or sid not in sids:
            return
        sids.discard(sid)
        if not sids:
            del self._local[key]
        self._conns.pop(sid, None)
        await self._submit(Op("part", to_ms(when), sid, key, (reason,)))

    def status_of(self, key: str) -> str | None:
        """The status user ``key`` has, or will have once the outbox is replayed: the
        latest this node asked for while Redis was away, else the mirror's."""
        if self.outbox and key in self._pending_status:
            return self._pending_status[key]
        return self._current(key)[0]

    async def set_status(self, sid: str, key: str, status: str, now: datetime, reason: str) -> None:
        """The user's new status, from connection ``sid`` (which counts for them)."""
        await self._submit(Op("status", to_ms(now), sid, key, (status, reason)))

    async def change(self, user: User, status: str, now: datetime, reason: str) -> None:
        sids = self._local.get(user.key)
        if sids:
            await self.set_status(next(iter(sids)), user.key, status, now, reason)

    def seen(self, key: str, now: datetime, *, sighting: bool = True) -> User | None:
        user = self.users.get(key)
        if user is not None:
            user.last_seen = max(user.last_seen, now)
            if sighting:
                self.sighting(user)
        return user

    def sighting(self, user: User) -> None:
        if self._writer is not None:
            self._writer.add_sighting(sighting_of(user))

    # --- reading ------------------------------------------------------------------------

    def live(self, user: User, live: Callable[[str], bool]) -> bool:
        """Whether ``user`` has a live connection: one of this node's, or (not knowable
        here, and vouched for by the node that holds it) any elsewhere."""
        sids = self._local.get(user.key)
        if not sids:
            return True
        return any(map(live, sids))

    def online_users(self, live: Callable[[str], bool]) -> list[dict]:
        return online_list(self.users.values(), self.now(), lambda u: self.live(u, live))

    def snapshot(self) -> dict[str, tuple[str, int]]:
        """``{user key: (status, this node's connections counting for it)}``."""
        return {key: (u.status, len(self._local.get(key, ()))) for key, u in self.users.items()}

    async def recall(self, keys: list[str]) -> None:
        """Users among ``keys`` neither present nor remembered here, whom Redis still
        knows as offline (a hash is kept an hour), become remembered departures, so a
        status query answers the same on every node (nothing when Redis is away)."""
        unknown = [k for k in dict.fromkeys(keys) if k not in self.users and k not in self.departed]
        if not unknown or self.link.epoch is None:
            return
        fields = ("status", "last_seen", "wire", "type", "name", "team")
        try:
            async with self.link.client.pipeline(transaction=False) as pipe:
                for key in unknown[:1000]:
                    pipe.hmget(f"presence:user:{key}", fields)
                rows = await self.link.guarded(pipe.execute())
        except RedisUnavailable:
            return
        for key, row in zip(unknown, rows, strict=False):
            status, last_seen, wire, user_type, user_name, team = row
            if status != OFFLINE or last_seen is None or key in self.users:
                continue
            moment = from_ms(last_seen)
            self.departed[key] = User(key, _wire(wire, key), OFFLINE, moment, moment)
            self.departed[key].user_type = user_type
            self.departed[key].user_name = user_name
            self.departed[key].team = team
        while len(self.departed) > self.MAX_DEPARTED:
            self.departed.popitem(last=False)

    # --- the mirror ---------------------------------------------------------------------

    def learn(self, answer: dict) -> None:
        """Take a script's answer about a user: what Redis holds now, ahead of what this
        node's clients have been told. It serves the node's own decisions at once
        (:meth:`status_of`, :meth:`team_of`, :meth:`admits`); the mirror itself, which
        clients read (snapshots, lists), changes only with the stream, so a snapshot
        never holds a change its client will be told again, nor one told later than
        an older one."""
        key = answer.get("user")
        if key is None or answer.get("lc") is None:
            return
        lc = int(answer["lc"])
        if lc <= self._version.get(key, -1):
            self._ahead.pop(key, None)  # the stream told it already
            return
        known = self._ahead.get(key)
        if known is not None and known[0] > lc:
            return
        present = bool(answer.get("present"))
        self._ahead[key] = (lc, present, answer.get("status"), answer.get("team"))

    def _current(self, key: str) -> tuple[str | None, str | None]:
        """User ``key``'s status (None: not present) and team, as Redis last said."""
        known = self._ahead.get(key)
        if known is not None:
            return (known[2] if known[1] else None), known[3]
        user = self.users.get(key)
        return (user.status, user.team) if user is not None else (None, None)

    def _last_change(self, key: str, user: User) -> int:
        known = self._ahead.get(key)
        told = self._version.get(key, to_ms(user.status_since))
        return max(told, known[0]) if known is not None else told

    def team_of(self, key: str) -> str | None:
        """The team of present user ``key`` (None: unknown, or not present)."""
        return self._current(key)[1]

    def _gone(self, key: str, moment: datetime, known: User | None = None) -> None:
        """User ``key`` left at ``moment``: remembered as departed (``known``: who they
        were, for a user this node never had present)."""
        if len(self._version) > self._prune_at:
            self._forget_versions()
        user = self.users.pop(key, None) or known
        if user is not None:
            user.last_seen = moment
            self.departed[key] = user
            self.departed.move_to_end(key)
            if len(self.departed) > self.MAX_DEPARTED:
                self.departed.popitem(last=False)

    def _forget_versions(self) -> None:
        """Keep last-transition times only for users present or remembered as departed
        (an entry about anyone else is newer than anything forgotten: amortised O(1))."""
        self._version = {
            key: at
            for key, at in self._version.items()
            if key in self.users or key in self.departed
        }
        self._prune_at = max(20_000, 2 * len(self._version))

    async def deliver(self, fields: dict[str, str]) -> None:
        """One stream entry: into the mirror (if newer than known), then to this node's
        clients (always: the stream reader hands each entry over once)."""
        key, status = fields["user"], fields["status"]
        at = int(fields["at"])
        moment = from_ms(at)
        names = {
            "user_type": fields.get("type"),
            "user_name": fields.get("name"),
            "team": fields.get("team"),
        }
        wire = _wire(fields.get("wire"), key)
        told = User(key, wire, status, moment, moment, **names)
        known = self._ahead.get(key)
        if known is not None and known[0] <= at:
            del self._ahead[key]  # told now
        if at > self._version.get(key, -1):
            self._version[key] = at
            if status == OFFLINE:
                self._gone(key, moment, User(key, wire, status, moment, moment, **names))
            else:
                user = self.users.get(key)
                if user is None:
                    user = User(key, wire, status, moment, moment, **names)
                    self.users[key] = user
                    self.departed.pop(key, None)
                else:
                    user.status, user.status_since = status, moment
                    user.last_seen = max(user.last_seen, moment)
                    for name, value in names.items():
                        if value is not None:
                            setattr(user, name, value)
        self.broadcasts += 1
        await self.publish(told, status, moment, fields.get("reason") or "")

    def replace(self, present: dict[str, dict]) -> list[tuple[User, str, datetime]]:
        """The mirror becomes ``present`` ({key: user hash}); returns the differences
        as transitions to tell (for a node that lost the stream's thread)."""
        told: list[tuple[User, str, datetime]] = []
        now = self.now()
        for key in list(self.users):
            if key not in present:
                user = self.users[key]
                self._gone(key, now)
                told.append((user, OFFLINE, now))
        for key, h in present.items():
            lc = int(h.get("last_change") or 0)
            user = self.users.get(key)
            since = from_ms(h.get("since") or lc)
            status = h.get("status") or protocol.ONLINE
            if user is None or user.status != status:
                if user is None:
                    user = User(key, _wire(h.get("wire"), key), status, since, since)
                    self.users[key] = user
                    self.departed.pop(key, None)
                user.status, user.status_since = status, since
                told.append((user, status, since))
            user.user_type = h.get("type", user.user_type)
            user.user_name = h.get("name", user.user_name)
            user.team = h.get("team", user.team)
            self._version[key] = max(self._version.get(key, -1), lc)
        for key in [k for k, known in self._ahead.items() if known[0] <= self._version.get(k, -1)]:
            del self._ahead[key]
        return told

    # --- operations and the outbox ------------------------------------------------------

    async def _submit(self, op: Op) -> None:
        if self.outbox or self.link.epoch is None:
            self._wait(op)  # nothing overtakes what waits
            return
        try:
            await self._apply(op)
        except RedisUnavailable:
            self._wait(op)

    def _wait(self, op: Op) -> None:
        self.outbox.append(op)
        if op.name == "status":
            self._pending_status[op.key] = op.args[0]
        elif op.name == "join" and op.key not in self.users:
            self._pending_status.setdefault(op.key, protocol.ONLINE)

    async def _apply(self, op: Op) -> dict:
        """Run ``op``'s script; a "reaped" or "epoch" answer is handled first and the
        operation run again. RedisUnavailable when Redis does not answer."""
        marker = None
        for _attempt in range(4):
            generation = self.link.generation
            if op.name == "join":
                wire, names = op.args
                answer = await self.link.run("join", op.sid, op.key, wire, names, at=op.at)
            elif op.name == "part":
                answer = await self.link.run("part", op.sid, op.key, op.args[0], at=op.at)
            else:
                status, reason = op.args
                answer = await self.link.run("status", op.sid, op.key, status, reason, at=op.at)
            marker = answer.get("r")
            if marker in ("reaped", "epoch"):
                await self.recover(marker, generation)
                continue
            if op.name == "join" and marker != "g":
                self.confirmed[op.sid] = op.key
            elif op.name == "part":
                self.confirmed.pop(op.sid, None)
            if marker == "t":
                self.transitions += 1
            self.learn(answer)
            return answer
        raise RedisUnavailable(f"the cluster kept refusing {op.name} ({marker})")

    async def drain(self) -> int:
        """Replay the outbox in order while Redis answers; returns how many ran."""
        ran = 0
        async with self._draining:
            while (op := self.outbox.first()) is not None:
                await self._apply(op)  # RedisUnavailable: the rest waits for the next try
                self.outbox.done(op)
                ran += 1
            if self.outbox.overflowed:
                await self.resync()
                self.outbox.overflowed = False
            self._pending_status.clear()
        if ran:
            log.info("cluster: %d operations replayed from the outbox", ran)
        return ran

    async def resync(self) -> None:
        """Make Redis hold exactly this node's connections (after the outbox refused
        operations): a connection Redis has and the node does not stops counting, one
        the node has and Redis does not starts counting, a status asked for meanwhile
        is set; every transition this makes is dated now and ``inferred`` (when it
        happened is not known), reason ``reconcile``."""
        node = self.link.node
        held = await self.link.guarded(self.link.client.hgetall(f"presence:node:{node}"))
        made = 0
        for sid, key in held.items():
            mine = self._conns.get(sid)
            if mine is None or mine[0] != key:
                answer = await self.link.run("part", sid, key, "reconcile", True)
                self.confirmed.pop(sid, None)
                made += answer.get("r") == "t"
                self.learn(answer)
        for sid, (key, wire, names) in list(self._conns.items()):
            if held.get(sid) != key:
                answer = await self.link.run("join", sid, key, wire, names, "reconcile", True)
                self.confirmed[sid] = key
                made += answer.get("r") == "t"
                self.learn(answer)
        for key, status in list(self._pending_status.items()):
            sids = self._local.get(key)
            current = self._current(key)[0]
            if sids and current is not None and current != status:
                answer = await self.link.run(
                    "status", next(iter(sids)), key, status, protocol.USER_STATUS, True
                )
                made += answer.get("r") == "t"
                self.learn(answer)
        self.transitions += made
        log.warning("cluster: connections reconciled with Redis (%d transitions)", made)

    # --- failures -----------------------------------------------------------------------

    async def recover(self, marker: str, generation: int | None = None) -> None:
        """Handle a marker: "reaped" (register again, re-join the connections Redis
        held for this node) or "epoch" (Redis lost its data: register, restore them,
        settle later). Once per event, however many calls saw the marker. A recovery
        Redis interrupted (RedisUnavailable) stays :attr:`unfinished` and is done again,
        whole, by the next call (the liveness loop makes one every round)."""
        async with self._recovery:
            if self.unfinished is not None:
                marker = "epoch" if "epoch" in (marker, self.unfinished) else marker
            elif generation is not None and self.link.generation != generation:
                return  # another call recovered already
            self.unfinished = marker
            if marker == "reaped":
                await self._rejoin()
            else:
                await self._restore()
            self.unfinished = None
            self._restore_from = None
            self.recoveries[marker] += 1

    async def _rejoin(self) -> None:
        await self.link.register(fresh=False)
        log.warning(
            "cluster: this node was taken as dead; registered again, re-joining %d connections",
            len(self.confirmed),
        )
        for sid, key in list(self.confirmed.items()):
            held = self._conns.get(sid)
            if held is None or held[0] != key or self.confirmed.get(sid) != key:
                self.confirmed.pop(sid, None)  # stopped counting meanwhile: not again
                continue
            # the status the user had before the cluster took them offline
            before = self.users.get(key) or self.departed.get(key)
            status = before.status if before is not None else protocol.ONLINE
            answer = await self.link.run("join", sid, key, held[1], held[2])
            if answer.get("r") == "t":
                self.transitions += 1
                if status != protocol.ONLINE and status != OFFLINE:
                    self.learn(answer)
                    answer = await self.link.run("status", sid, key, status, protocol.USER_STATUS)
                    if answer.get("r") == "t":
                        self.transitions += 1
            self.learn(answer)

    async def _restore(self) -> None:
        if self._restore_from is None:
            self._restore_from = (self.link.last_good_ms or to_ms(self.now()), dict(self.users))
        good, before = self._restore_from
        await self.link.register(fresh=False)
        log.warning(
            "cluster: Redis lost its data; epoch %s, restoring %d connections",
            self.link.epoch,
            len(self.confirmed),
        )
        conns = []
        for sid, key in self.confirmed.items():
            held = self._conns.get(sid)
            wire, names = (held[1], held[2]) if held is not None else (key, {})
            entry = {"sid": sid, "user": key, "wire": _json(wire), "names": _json(names)}
            user = self.users.get(key)
            if user is not None:
                entry.update(
                    status=user.status,
                    since=to_ms(user.status_since),
                    lc=self._last_change(key, user),
                )
            conns.append(entry)
        for start in range(0, len(conns), _RESTORE_CHUNK):
            answer = await self.link.run("restore", conns[start : start + _RESTORE_CHUNK])
            self.transitions += int(answer.get("transitions") or 0)
        self._record_restored({c["user"] for c in conns if "status" in c})
        users = [
            {
                "user": key,
                "wire": _json(user.wire_id),
                "names": _json(
                    {
                        k: v
                        for k, v in (
                            ("type", user.user_type),
                            ("name", user.user_name),
                            ("team", user.team),
                        )
                        if v is not None
                    }
                ),
                "since": to_ms(user.status_since),
                "lc": self._last_change(key, user),
            }
            for key, user in before.items()
        ]
        if users:
            self._spawn(self._settle(users, good, self.link.epoch))

    def _record_restored(self, keys: set[str]) -> None:
        """Write each restored user's current status at the moment it began: a stream
        entry a writer had taken but not written vanished with Redis, and this row
        fills that hole (where it was written, the unique key makes it a no-op)."""
        if self._writer is None:
            return
        now = self.now()
        for key in keys:
            user = self.users.get(key)
            if user is None:
                continue
            self._writer.add_transition(
                storage.Transition(
                    user_id=key,
                    status=user.status,
                    occurred_at=user.status_since,
                    received_at=now,
                    reason="reconcile",
                    source=self.source,
                    user_type=user.user_type,
                    user_name=user.user_name,
                    team=user.team,
                )
            )

    async def _settle(self, users: list[dict], good_ms: int, epoch: str | None) -> None:
        """After every live node had the time to restore, users nobody restored go
        offline (inferred, reason reconcile): once, cluster-wide (the settle script)."""
        await asyncio.sleep(self.settle_after)
        while self.link.epoch == epoch:
            try:
                for start in range(0, len(users), _RESTORE_CHUNK):
                    chunk = users[start : start + _RESTORE_CHUNK]
                    answer = await self.link.run("settle", chunk, good_ms)
                    if answer.get("r") != "ok":
                        return  # reaped or another epoch: its own recovery restores
                    self.transitions += int(answer.get("transitions") or 0)
                return
            except RedisUnavailable:
                await asyncio.sleep(1)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
