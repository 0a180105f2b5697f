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
CLIENT_EVENTS = (USER_ONLINE, USER_OFFLINE, USER_HEARTBEAT, USER_STATUS, GET_ONLINE_USERS)
SERVER_EVENTS = (USER_STATUS_CHANGED, ONLINE_USERS_LIST, PRESENCE_ERROR)
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
