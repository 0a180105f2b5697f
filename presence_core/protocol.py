"""The guide's Socket.IO payloads: checking what comes in, building what goes out.

Incoming events (client → server) are parsed by ``parse_user_online``,
``parse_user_offline``, ``parse_user_heartbeat``, ``parse_user_status`` and
``parse_get_online_users``; outgoing payloads are built by ``status_changed``
and ``online_user``. Observers of a server (the listener) parse what the server
sends with ``parse_status_changed`` and ``parse_online_users``.

Every parser raises :class:`ProtocolError` (a ValueError) with a one-line
message naming what is wrong; nothing here touches the network or the database.

This module is the one home of the protocol's rules, for the server and the
listener alike: the event names, the statuses that mean something (``online``,
``offline``), every length limit and every character check. Whatever passes them
PostgreSQL stores: no NUL character, no lone surrogate, nothing over-long, only
the types the protocol names.

``userId`` keeps its wire type in outgoing payloads (a number stays a number, as
in the guide); :func:`user_id_text` gives the stored text, so ``123`` and
``"123"`` are the same user.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from presence_core.status import parse_timestamp

ONLINE = "online"
OFFLINE = "offline"  # ends presence; every other status is present

# The protocol's events, by the direction they travel. Server, listener and simulator
# name events through these constants, never through string literals of their own.
USER_ONLINE = "userOnline"
USER_OFFLINE = "userOffline"
USER_HEARTBEAT = "userHeartbeat"
USER_STATUS = "userStatus"
GET_ONLINE_USERS = "getOnlineUsers"
USER_STATUS_CHANGED = "userStatusChanged"
ONLINE_USERS_LIST = "onlineUsersList"
PRESENCE_ERROR = "presenceError"
GUIDE_CLIENT_EVENTS = (USER_ONLINE, USER_OFFLINE, USER_HEARTBEAT, USER_STATUS, GET_ONLINE_USERS)
GUIDE_SERVER_EVENTS = (USER_STATUS_CHANGED, ONLINE_USERS_LIST, PRESENCE_ERROR)
# protocol version 2 (an extension: a client asks for it with ``protocol: 2`` in its
# Socket.IO auth payload); getUsersStatus is answered whatever the version
PROTOCOL_V2 = 2
SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
GET_USERS_STATUS = "getUsersStatus"
PRESENCE_DIFF = "presenceDiff"
CLIENT_EVENTS = GUIDE_CLIENT_EVENTS + (SUBSCRIBE, UNSUBSCRIBE, GET_USERS_STATUS)
SERVER_EVENTS = GUIDE_SERVER_EVENTS + (PRESENCE_DIFF,)
EVENTS = CLIENT_EVENTS + SERVER_EVENTS

MAX_ID = 256  # characters of a userId
MAX_TEXT = 256  # userName, userType, team
MAX_STATUS = 64
MAX_REASON = 64  # the reason a userStatusChanged gives (our extension)
_STATUS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:/-]*$")
# what PostgreSQL refuses in text: NUL, and lone surrogates (not encodable as UTF-8)
_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")

UserId = int | str


class ProtocolError(ValueError):
    """A payload that does not follow the protocol; the message says why."""


# --- incoming events (client → server) ------------------------------------------------


@dataclass(frozen=True)
class UserOnline:
    """A parsed ``userOnline``: ``user_id`` as sent on the wire, ``key`` as stored."""

    user_id: UserId
    key: str
    user_type: str | None = None
    user_name: str | None = None
    team: str | None = None


@dataclass(frozen=True)
class UserRef:
    """A parsed ``userOffline`` or ``userHeartbeat``."""

    user_id: UserId
    key: str


@dataclass(frozen=True)
class UserStatus:
    """A parsed ``userStatus``: a present status other than offline."""

    user_id: UserId
    key: str
    status: str


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def unstorable(text: str) -> str | None:
    """What in ``text`` PostgreSQL would refuse ("a NUL character", "a lone surrogate
    U+D800"), or None when it can be stored."""
    found = _UNSTORABLE_RE.search(text)
    if found is None:
        return None
    char = found.group()
    return "a NUL character" if char == "\x00" else f"a lone surrogate U+{ord(char):04X}"


def user_id_text(value: object) -> str:
    """A protocol ``userId`` as stored text: ``123`` → ``"123"``, strings unchanged.

    Raises ProtocolError (a ValueError) for anything else (bool, float, None,
    containers), for empty or over-long ids (more than 256 characters) and for ids
    PostgreSQL would refuse (NUL, lone surrogates).
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ProtocolError(f"userId must be a number or a string, not {type(value).__name__}")
    if isinstance(value, int) and abs(value) >= 10**MAX_ID:  # str() of a huge int is slow
        raise ProtocolError(f"userId is a number of more than {MAX_ID} digits")
    result = str(value)
    if not result.strip():
        raise ProtocolError("userId is empty")
    if len(result) > MAX_ID:
        raise ProtocolError(f"userId is {len(result)} characters long; at most {MAX_ID}")
    bad = unstorable(result)
    if bad is not None:
        raise ProtocolError(f"userId holds {bad}")
    return result


def check_text(value: object, field: str, event: str, limit: int = MAX_TEXT) -> str:
    """A text field (``userName``, ``userType``, ``team``…): a string of at most
    ``limit`` characters once stripped, storable as it is. Returned stripped."""
    if not isinstance(value, str):
        raise ProtocolError(f"{event}: {field} must be a string, not {type(value).__name__}")
    text = value.strip()
    if len(text) > limit:
        raise ProtocolError(f"{event}: {field} is {len(text)} characters; at most {limit}")
    bad = unstorable(text)
    if bad is not None:
        raise ProtocolError(f"{event}: {field} holds {bad}")
    return text


def _mapping(payload: object, event: str) -> Mapping:
    if not isinstance(payload, Mapping):
        raise ProtocolError(f"{event} expects an object, got {type(payload).__name__}")
    return payload


def _user_id(payload: Mapping, event: str, *, required: bool = True) -> tuple[UserId, str] | None:
    if "userId" not in payload or payload["userId"] is None:
        if required:
            raise ProtocolError(f"{event} needs a userId")
        return None
    value = payload["userId"]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # 123.0 from a loose JSON encoder is 123
    try:
        key = user_id_text(value)
    except ProtocolError as exc:
        raise ProtocolError(f"{event}: {exc}") from None
    return value, key


def _optional_text(payload: Mapping, field: str, event: str, limit: int = MAX_TEXT) -> str | None:
    value = payload.get(field)
    if value is None:
        return None
    return check_text(value, field, event, limit) or None


def check_status(value: object, event: str = USER_STATUS) -> str:
    """A status name: a non-empty string of at most 64 letters, digits and ``_.:/-`` or
    spaces, starting with a letter or digit. Returned stripped, case kept."""
    if not isinstance(value, str):
        raise ProtocolError(f"{event}: status must be a string, not {type(value).__name__}")
    status = value.strip()
    if not status:
        raise ProtocolError(f"{event}: status is empty")
    if len(status) > MAX_STATUS:
        raise ProtocolError(f"{event}: status is {len(status)} characters; at most {MAX_STATUS}")
    if not _STATUS_RE.match(status):
        raise ProtocolError(f"{event}: status {_describe(status)} has characters not allowed")
    return status


def parse_user_online(payload: object, *, default_id: UserId | None = None) -> UserOnline:
    """``userOnline {userId, userType, userName, team?}``.

    ``default_id`` stands in for a missing ``userId`` (a client identified by its
    token may leave it out). Names and team are optional strings.
    """
    event = USER_ONLINE
    if payload is None and default_id is not None:
        payload = {}
    data = _mapping(payload, event)
    found = _user_id(data, event, required=default_id is None)
    if found is None:
        found = (default_id, user_id_text(default_id))
    return UserOnline(
        user_id=found[0],
        key=found[1],
        user_type=_optional_text(data, "userType", event),
        user_name=_optional_text(data, "userName", event),
        team=_optional_text(data, "team", event),
    )


def _parse_ref(payload: object, event: str, default_id: UserId | None) -> UserRef:
    if payload is None and default_id is not None:
        payload = {}
    data = _mapping(payload, event)
    found = _user_id(data, event, required=default_id is None)
    if found is None:
        found = (default_id, user_id_text(default_id))
    return UserRef(user_id=found[0], key=found[1])


def parse_user_offline(payload: object, *, default_id: UserId | None = None) -> UserRef:
    """``userOffline {userId}``."""
    return _parse_ref(payload, USER_OFFLINE, default_id)


def parse_user_heartbeat(payload: object, *, default_id: UserId | None = None) -> UserRef:
    """``userHeartbeat {userId}`` (the guide's origin added it)."""
    return _parse_ref(payload, USER_HEARTBEAT, default_id)


def parse_user_status(payload: object, *, default_id: UserId | None = None) -> UserStatus:
    """``userStatus {userId, status}``: any present status; ``offline`` is refused
    (a client leaves with ``userOffline``)."""
    event = USER_STATUS
    data = _mapping(payload, event)
    ref = _parse_ref(data, event, default_id)
    if "status" not in data:
        raise ProtocolError(f"{event} needs a status")
    status = check_status(data["status"], event)
    if status == OFFLINE:
        raise ProtocolError(f"{event}: use userOffline to go offline")
    return UserStatus(user_id=ref.user_id, key=ref.key, status=status)


def parse_get_online_users(payload: object = None) -> None:
    """``getOnlineUsers``: carries nothing (an empty object is accepted too)."""
    if payload is None or (isinstance(payload, Mapping) and not payload):
        return None
    raise ProtocolError(f"{GET_ONLINE_USERS} carries no data, got {_describe(payload)}")


# --- outgoing payloads (server → clients) --------------------------------------------


@functools.lru_cache(maxsize=16384)  # a snapshot repeats each user's times for every client
def iso_utc(moment: datetime) -> str:
    """``moment`` as JavaScript's ``Date.toJSON()`` writes it: UTC, milliseconds, ``Z``.

    A naive datetime is taken as UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def to_millis(moment: datetime) -> datetime:
    """``moment`` in UTC cut to whole milliseconds, the precision the wire carries
    (so what is stored equals what a listener parses back)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def now_millis() -> datetime:
    """The current UTC time, cut to milliseconds."""
    return to_millis(datetime.now(UTC))


def status_changed(
    user_id: UserId, status: str, last_seen: datetime, reason: str | None = None
) -> dict:
    """The ``userStatusChanged`` payload ``{userId, status, lastSeen}``, with ``reason``
    (``userOnline``, ``disconnect``, ``timeout``…) when given: an extension the
    guide's clients ignore and a listener can log."""
    payload = {"userId": user_id, "status": status, "lastSeen": iso_utc(last_seen)}
    if reason is not None:
        payload["reason"] = reason
    return payload


def online_user(
    user_id: UserId,
    status: str,
    last_seen: datetime,
    user_type: str | None,
    user_name: str | None,
    team: str | None = None,
    status_since: datetime | None = None,
) -> dict:
    """One ``onlineUsersList`` entry ``{userId, status, lastSeen, userType, userName}``.

    Extensions the guide's clients ignore, added only when known: ``team``, and
    ``statusSince`` (when the current status began; ``lastSeen`` is the latest sign
    of life, which is what a "last seen" display wants, while a listener
    reconciling after a gap wants to know when the user came online).
    """
    entry = {
        "userId": user_id,
        "status": status,
        "lastSeen": iso_utc(last_seen),
        "userType": user_type,
        "userName": user_name,
    }
    if team is not None:
        entry["team"] = team
    if status_since is not None:
        entry["statusSince"] = iso_utc(status_since)
    return entry


def presence_error(event: str, message: str) -> dict:
    """The ``presenceError {event, message}`` payload sent to a client whose event was refused."""
    return {"event": event[:64], "message": message}


# --- what a server sends, as an observer (the listener) reads it ------------------------


@dataclass(frozen=True)
class StatusChange:
    """A parsed ``userStatusChanged``.

    ``last_seen`` is the parsed ``lastSeen`` (aware UTC), or None when it was missing
    or unparseable; ``last_seen_raw`` keeps what was sent so a caller can say which.
    """

    user_id: str
    status: str
    last_seen: datetime | None
    last_seen_raw: object = None
    reason: str | None = None  # our server's extension, made storable (observed_text)

    @property
    def last_seen_problem(self) -> str | None:
        """``"missing"``, ``"unparseable"`` or None when ``last_seen`` is good."""
        if self.last_seen is not None:
            return None
        return "missing" if self.last_seen_raw is None else "unparseable"


@dataclass(frozen=True)
class OnlineUser:
    """One parsed ``onlineUsersList`` entry (same ``last_seen`` rules as StatusChange).

    ``status_since``: when the current status began, from our server's
    ``statusSince`` extension; None from servers that do not send it.
    """

    user_id: str
    status: str
    last_seen: datetime | None
    user_type: str | None = None
    user_name: str | None = None
    team: str | None = None
    last_seen_raw: object = None
    status_since: datetime | None = None

    @property
    def last_seen_problem(self) -> str | None:
        if self.last_seen is not None:
            return None
        return "missing" if self.last_seen_raw is None else "unparseable"


def parse_last_seen(value: object) -> datetime | None:
    """A ``lastSeen`` as sent by a server: an ISO-8601 string (``Z`` or offset; no
    offset means UTC) or a JavaScript epoch in milliseconds. None when missing or
    unparseable (never raises)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return None
        try:
            return to_millis(datetime.fromtimestamp(value / 1000, UTC))
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str) and len(value) <= 64:
        try:
            return parse_timestamp(value)
        except ValueError:
            return None
    return None


def observed_text(value: object, limit: int = MAX_TEXT) -> str | None:
    """A name (or reason) a server sent, made storable: names are decoration, so a
    strange one is dropped (None), not fatal, and a long one is cut to ``limit``."""
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = str(value).strip()[:limit]
    if unstorable(text) is not None:
        return None
    return text or None


def parse_status_changed(payload: object) -> StatusChange:
    """``userStatusChanged {userId, status, lastSeen}`` as a server sends it."""
    event = USER_STATUS_CHANGED
    data = _mapping(payload, event)
    found = _user_id(data, event)
    assert found is not None
    if "status" not in data:
        raise ProtocolError(f"{event} needs a status")
    raw = data.get("lastSeen")
    return StatusChange(
        user_id=found[1],
        status=check_status(data["status"], event),
        last_seen=parse_last_seen(raw),
        last_seen_raw=raw,
        reason=observed_text(data.get("reason"), MAX_REASON),
    )


def _parse_online_entry(entry: object, index: int) -> OnlineUser:
    event = f"{ONLINE_USERS_LIST}[{index}]"
    data = _mapping(entry, event)
    found = _user_id(data, event)
    assert found is not None
    status = data.get("status")
    raw = data.get("lastSeen")
    return OnlineUser(
        user_id=found[1],
        status=ONLINE if status is None else check_status(status, event),
        last_seen=parse_last_seen(raw),
        user_type=observed_text(data.get("userType")),
        user_name=observed_text(data.get("userName")),
        team=observed_text(data.get("team")),
        last_seen_raw=raw,
        status_since=parse_last_seen(data.get("statusSince")),
    )


def parse_online_users(payload: object, *, skip_bad: bool = False) -> list[OnlineUser]:
    """``onlineUsersList [{userId, status, lastSeen, userType, userName}]``.

    A missing ``status`` means ``online`` (the list holds online users). A bad entry
    raises ProtocolError naming its index, or is left out with ``skip_bad=True``.
    """
    if not isinstance(payload, list):
        raise ProtocolError(f"{ONLINE_USERS_LIST} expects an array, got {type(payload).__name__}")
    users = []
    for index, entry in enumerate(payload):
        try:
            users.append(_parse_online_entry(entry, index))
        except ProtocolError:
            if not skip_bad:
                raise
    return users


# --- protocol version 2 (an extension; see docs/server.md) ----------------------------

MAX_SUBSCRIBE_IDS = 1000  # userIds in one subscribe/unsubscribe, and in getUsersStatus
MAX_SUBSCRIBE_TEAMS = 100  # teams in one subscribe/unsubscribe
_SUBSCRIPTION_FIELDS = frozenset({"teams", "userIds", "all"})


def protocol_version(auth: object) -> int:
    """The protocol a client speaks, from its Socket.IO ``auth`` payload: 2 when it
    holds ``protocol: 2``, else 1 (the guide's). Never raises: whatever else a client
    sends there (nothing, a string, ``protocol: "2"``, ``3``) gets the guide's protocol."""
    if not isinstance(auth, Mapping):
        return 1
    value = auth.get("protocol")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 1
    return PROTOCOL_V2 if value == PROTOCOL_V2 else 1


@dataclass(frozen=True)
class Subscription:
    """A parsed ``subscribe`` or ``unsubscribe``: ``all``, ``teams`` (stripped
    names) and ``users`` (``(wire id, key)`` pairs, in the order given, no key twice)."""

    all: bool = False
    teams: tuple[str, ...] = ()
    users: tuple[tuple[UserId, str], ...] = ()


def _id_list(data: Mapping, event: str, field: str = "userIds") -> tuple[tuple[UserId, str], ...]:
    values = data.get(field)
    if not isinstance(values, list):
        raise ProtocolError(f"{event}: {field} must be an array, not {type(values).__name__}")
    if len(values) > MAX_SUBSCRIBE_IDS:
        raise ProtocolError(
            f"{event}: {field} holds {len(values)} ids; at most {MAX_SUBSCRIBE_IDS} at once"
        )
    found: dict[str, UserId] = {}
    for index, value in enumerate(values):
        parsed = _user_id({"userId": value}, f"{event}: {field}[{index}]")
        assert parsed is not None
        found.setdefault(parsed[1], parsed[0])
    return tuple((wire, key) for key, wire in found.items())


def parse_subscription(payload: object, event: str = SUBSCRIBE) -> Subscription:
    """``subscribe`` / ``unsubscribe`` ``{teams?: [..], userIds?: [..], all?: true}``.

    At least one of them; unknown fields, non-boolean ``all``, empty or over-long
    names, more than 100 teams or 1,000 ids at once are refused (ProtocolError)."""
    data = _mapping(payload, event)
    unknown = sorted(str(k)[:32] for k in data if k not in _SUBSCRIPTION_FIELDS)
    if unknown:
        raise ProtocolError(f"{event}: unknown field {unknown[0]!r} (teams, userIds, all)")
    everything = data.get("all", False)
    if not isinstance(everything, bool):
        raise ProtocolError(f"{event}: all must be true or false, not {_describe(everything)}")
    teams: list[str] = []
    if data.get("teams") is not None:
        values = data["teams"]
        if not isinstance(values, list):
            raise ProtocolError(f"{event}: teams must be an array, not {type(values).__name__}")
        if len(values) > MAX_SUBSCRIBE_TEAMS:
            raise ProtocolError(
                f"{event}: teams holds {len(values)} names; at most {MAX_SUBSCRIBE_TEAMS} at once"
            )
        for index, value in enumerate(values):
            team = check_text(value, f"teams[{index}]", event)
            if not team:
                raise ProtocolError(f"{event}: teams[{index}] is empty")
            if team not in teams:
                teams.append(team)
    users = _id_list(data, event) if data.get("userIds") is not None else ()
    if not everything and not teams and not users:
        raise ProtocolError(f"{event} needs teams, userIds or all: true")
    return Subscription(all=everything, teams=tuple(teams), users=users)


def parse_get_users_status(payload: object) -> tuple[tuple[UserId, str], ...]:
    """``getUsersStatus {userIds: [..]}``: up to 1,000 ids, as ``(wire id, key)``."""
    data = _mapping(payload, GET_USERS_STATUS)
    unknown = sorted(str(k)[:32] for k in data if k != "userIds")
    if unknown:
        raise ProtocolError(f"{GET_USERS_STATUS}: unknown field {unknown[0]!r} (userIds)")
    if "userIds" not in data:
        raise ProtocolError(f"{GET_USERS_STATUS} needs userIds")
    return _id_list(data, GET_USERS_STATUS)


def user_state(
    user_id: UserId,
    status: str,
    last_seen: datetime | None,
    *,
    status_since: datetime | None = None,
    team: str | None = None,
    user_type: str | None = None,
    user_name: str | None = None,
) -> dict:
    """One user's state in a ``subscribe`` acknowledgement or a ``getUsersStatus``
    answer: ``{userId, status, lastSeen, statusSince, team, userType, userName}``
    (``lastSeen`` null for a user never seen, or one who hides it)."""
    return {
        "userId": user_id,
        "status": status,
        "lastSeen": iso_utc(last_seen) if last_seen is not None else None,
        "statusSince": iso_utc(status_since) if status_since is not None else None,
        "team": team,
        "userType": user_type,
        "userName": user_name,
    }


def diff_change(
    user_id: UserId,
    status: str,
    moment: datetime,
    reason: str | None,
    *,
    team: str | None,
    user_type: str | None,
    user_name: str | None,
) -> dict:
    """One entry of a ``presenceDiff``: a transition at ``moment`` (its ``lastSeen``
    and ``statusSince``)."""
    stamp = iso_utc(moment)
    return {
        "userId": user_id,
        "status": status,
        "lastSeen": stamp,
        "statusSince": stamp,
        "reason": reason,
        "team": team,
        "userType": user_type,
        "userName": user_name,
    }


# --- version 2 as an observer (the listener) reads it -----------------------------------


@dataclass(frozen=True)
class PresenceDiff:
    """A parsed ``presenceDiff``: its ``seq`` and its changes, in order."""

    seq: int
    changes: tuple[StatusChange, ...]
    names: tuple[OnlineUser, ...] = ()  # the same changes' names and teams


def _seq(value: object, event: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"{event}: seq must be a whole number, not {_describe(value)}")
    return value


def parse_presence_diff(payload: object) -> PresenceDiff:
    """``presenceDiff {seq, changes: [{userId, status, lastSeen, ...}]}``."""
    event = PRESENCE_DIFF
    data = _mapping(payload, event)
    seq = _seq(data.get("seq"), event)
    changes = data.get("changes")
    if not isinstance(changes, list):
        raise ProtocolError(f"{event}: changes must be an array")
    parsed = [parse_status_changed(change) for change in changes]
    names = [_parse_online_entry(change, index) for index, change in enumerate(changes)]
    return PresenceDiff(seq=seq, changes=tuple(parsed), names=tuple(names))


def parse_subscribe_ack(payload: object) -> tuple[int, list[OnlineUser]]:
    """A ``subscribe`` acknowledgement ``{ok: true, seq, users}``: ``(seq, users)``.

    A refusal (``{ok: false, error}``) raises ProtocolError with the server's reason."""
    event = f"{SUBSCRIBE} acknowledgement"
    data = _mapping(payload, event)
    if data.get("ok") is not True:
        raise ProtocolError(f"{SUBSCRIBE} refused: {observed_text(data.get('error')) or '?'}")
    users = data.get("users")
    if not isinstance(users, list):
        raise ProtocolError(f"{event}: users must be an array")
    return _seq(data.get("seq"), event), [
        _parse_online_entry(entry, index) for index, entry in enumerate(users)
    ]


class DiffOrder:
    """A version-2 client's watch over ``presenceDiff`` ``seq``: each diff must carry
    the previous one's ``seq`` + 1 (the base is the last ``subscribe``
    acknowledgement's ``seq``); a jump means diffs were missed: re-subscribe."""

    NEXT, OLD, GAP = "next", "old", "gap"

    def __init__(self, seq: int = 0) -> None:
        self.seq = seq

    def reset(self, seq: int) -> None:
        """A ``subscribe`` acknowledgement's ``seq``: the next diff carries ``seq + 1``."""
        self.seq = seq

    def check(self, seq: int) -> str:
        """``NEXT`` (in order; remembered), ``OLD`` (at or before the base: a diff
        sent before the acknowledgement it precedes, already in its snapshot) or
        ``GAP`` (something was missed; the base is left as it was)."""
        if seq == self.seq + 1:
            self.seq = seq
            return self.NEXT
        return self.OLD if seq <= self.seq else self.GAP
