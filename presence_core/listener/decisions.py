"""The listener's pure decisions: what time an event gets, which rows a reconcile
writes, how long to wait before retrying, what a listener is called.

Nothing here does I/O or reads a clock: every moment is an argument, so each rule
can be tested with plain values (tests/test_listener.py, "pure parts").
"""

from __future__ import annotations

import random
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from presence_core.database.storage import OFFLINE, Sighting, Transition
from presence_core.protocol import OnlineUser, ProtocolError, observed_text, parse_online_users

__all__ = [
    "CLOCK_AHEAD_LIMIT",
    "CLOCK_BEHIND_LIMIT",
    "TICK",
    "UserView",
    "backoff_delay",
    "default_name",
    "departures",
    "event_time",
    "moved_after",
    "newer_than_list",
    "parse_snapshot",
    "payload_names",
    "plan_reconcile",
    "short",
    "spool_name",
]

CLOCK_AHEAD_LIMIT = timedelta(seconds=5)  # DESIGN "Clock"
CLOCK_BEHIND_LIMIT = timedelta(days=1)  # a lastSeen older than this is not believed either
# Keeps a user's rows strictly ordered in time: a second change of one user in the same
# millisecond is moved one millisecond on. A millisecond, not less: it is the wire's
# resolution (lastSeen carries milliseconds), so a moved time is still one a server could
# have sent (our server spaces same-millisecond changes exactly so) and compares equal
# to the broadcast it came from, never a microsecond beside it.
TICK = timedelta(milliseconds=1)
MAX_LOGGED_PAYLOAD = 200
# How far two writers' estimates of the database's clock may disagree (each is measured
# to a few milliseconds; our server never runs more than 5 ms ahead): a stored status
# that began this close before the online list was asked for may be newer than the list.
LIST_SLACK = timedelta(seconds=1)


@dataclass
class UserView:
    """What the listener believes about a user: status, since when, last sign of life."""

    status: str
    since: datetime | None
    last_seen: datetime | None


def event_time(
    last_seen: datetime | None, problem: str | None, received_at: datetime
) -> tuple[datetime, str | None]:
    """DESIGN "Clock": the event's ``lastSeen``, unless it is missing, unparseable,
    more than 5 s ahead of ``received_at`` (or more than a day behind it); then
    ``received_at``, with a note for the row's ``reason``."""
    if last_seen is None:
        return received_at, f"clock: lastSeen {problem or 'missing'}, received_at used"
    ahead = last_seen - received_at
    if ahead > CLOCK_AHEAD_LIMIT:
        return received_at, f"clock: lastSeen {ahead.total_seconds():.1f} s ahead, received_at used"
    if -ahead > CLOCK_BEHIND_LIMIT:
        return received_at, "clock: lastSeen over a day old, received_at used"
    return last_seen, None


def moved_after(view: UserView | None, at: datetime) -> datetime:
    """``at``, moved just after the user's current status began if it is not later."""
    if view is not None and view.since is not None and at <= view.since:
        return view.since + TICK
    return at


def newer_than_list(
    view: UserView | None, *, gap_start: datetime | None, reconnect_at: datetime
) -> bool:
    """True when the stored status is newer than the online list it is compared with.

    The list is asked for at ``reconnect_at`` and the database is read after it
    arrives, so a change another writer (our server's own writes, a second listener)
    stored in between is in the database but not in the list. Such a change began
    after the listener lost sight (``gap_start``: it is not the listener's own) and
    no earlier than the request, less :data:`LIST_SLACK`. The list cannot contradict
    it: its own broadcast follows the list, so the reconcile leaves the user alone.
    """
    if view is None or view.since is None:
        return False
    if gap_start is not None and view.since <= gap_start:
        return False
    return view.since >= reconnect_at - LIST_SLACK


def departures(answer: Iterable[OnlineUser]) -> dict[str, datetime]:
    """When each user of a ``getUsersStatus`` answer left, where the server knows it.

    Our server (alone or clustered) answers a user who left lately as ``offline`` with
    ``statusSince`` the moment of that offline transition, the very time it stored
    and broadcast; a user it knows only from the database comes without
    ``statusSince``, and those are left out: for them the moment is not known.
    """
    return {
        user.user_id: user.status_since
        for user in answer
        if user.status == OFFLINE and getattr(user, "status_since", None) is not None
    }


def plan_reconcile(
    state: Mapping[str, UserView],
    snapshot: Iterable[OnlineUser],
    *,
    gap_start: datetime | None,
    reconnect_at: datetime,
    received_at: datetime,
    source: str | None = None,
    left: Mapping[str, datetime] | None = None,
) -> list[Transition | Sighting]:
    """The rows that bring ``state`` in line with a server's ``onlineUsersList``.

    - A user in the snapshot whose status differs gets a row with the snapshot's
      status at its ``statusSince`` (our server's extension) or else its
      ``lastSeen``, when that falls inside the gap (after ``gap_start``, at most 5 s
      after ``reconnect_at``), else at ``reconnect_at``.
    - A present user absent from the snapshot gets an ``inferred`` ``offline`` row at
      ``gap_start`` (never overstate presence); with no earlier coverage at all, at
      the user's last sign of life. When the server said when the user left
      (``left``, from :func:`departures`) and that is after their status began and
      not ahead of the reconnect, the row is at that moment and not inferred: the
      same key as the server's own row, so a history the server also writes (a
      cluster's nodes) gets the offline once, not a second, inferred one.
    - Users whose status agrees get a sighting (names, ``last_seen``).

    Rows are kept after the user's current ``status_since``. A user whose stored
    status is newer than the list (:func:`newer_than_list`) gets no row at all.
    """
    rows: list[Transition | Sighting] = []
    seen: set[str] = set()
    for user in snapshot:
        if user.user_id in seen:
            continue
        seen.add(user.user_id)
        view = state.get(user.user_id)
        names = {"user_type": user.user_type, "user_name": user.user_name, "team": user.team}
        if (view.status if view else OFFLINE) == user.status:
            rows.append(Sighting(user.user_id, received_at, **names))
            continue
        if newer_than_list(view, gap_start=gap_start, reconnect_at=reconnect_at):
            continue
        # when the status began: our server says so (statusSince); the guide's servers
        # send lastSeen, which for them is the moment the user came online
        at, reason = getattr(user, "status_since", None) or user.last_seen, "reconcile"
        if at is None:
            at, reason = reconnect_at, f"reconcile: lastSeen {user.last_seen_problem}"
        elif gap_start is not None and at < gap_start:
            at, reason = reconnect_at, "reconcile: lastSeen before the gap, reconnect time used"
        elif at > reconnect_at + CLOCK_AHEAD_LIMIT:
            at, reason = reconnect_at, "reconcile: lastSeen ahead, reconnect time used"
        rows.append(
            Transition(
                user.user_id,
                user.status,
                moved_after(view, at),
                received_at,
                inferred=False,
                reason=reason,
                source=source,
                **names,
            )
        )
    for user_id, view in state.items():
        if view.status == OFFLINE or user_id in seen:
            continue
        if newer_than_list(view, gap_start=gap_start, reconnect_at=reconnect_at):
            continue
        known = (left or {}).get(user_id)
        if (
            known is not None
            and (view.since is None or known > view.since)
            and known <= reconnect_at + CLOCK_AHEAD_LIMIT
        ):
            rows.append(
                Transition(
                    user_id,
                    OFFLINE,
                    known,
                    received_at,
                    inferred=False,
                    reason="reconcile: left at the server's statusSince",
                    source=source,
                )
            )
            continue
        if gap_start is not None:
            at, reason = gap_start, "reconcile: absent from onlineUsersList"
        else:
            at = min(view.last_seen or view.since or reconnect_at, reconnect_at)
            reason = "reconcile: absent from onlineUsersList, no earlier coverage"
        rows.append(
            Transition(
                user_id,
                OFFLINE,
                moved_after(view, at),
                received_at,
                inferred=True,
                reason=reason,
                source=source,
            )
        )
    return rows


def parse_snapshot(payload: object) -> tuple[list[OnlineUser], list[tuple[str, object]], int]:
    """The users of an ``onlineUsersList`` payload, (error, entry) for each entry
    refused (the whole payload, when it is not a list), and how many names were
    dropped as not storable (see :func:`payload_names`)."""
    if not isinstance(payload, list):
        return [], [("not an array", payload)], 0
    users: list[OnlineUser] = []
    refused: list[tuple[str, object]] = []
    dropped = 0
    for entry in payload:
        try:
            user = parse_online_users([entry])[0]
        except ProtocolError as exc:
            refused.append((str(exc), entry))
            continue
        users.append(user)
        dropped += _dropped(entry, (user.user_type, user.user_name, user.team))
    return users, refused, dropped


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 10.0) -> float:
    """Exponential backoff with full jitter in [cap/2, cap] once capped: the delay
    before attempt ``attempt`` (1 for the first retry)."""
    ceiling = min(cap, base * 2 ** min(attempt - 1, 20))
    return random.uniform(ceiling / 2, ceiling)


_NO_NAMES = (None, None, None)
_NAMES = ("userType", "userName", "team")


def payload_names(payload: Mapping) -> tuple[tuple[str | None, str | None, str | None], int]:
    """(user_type, user_name, team) as a payload carries them, made storable by the
    protocol's rule (:func:`~presence_core.protocol.observed_text`), and how many of
    them were dropped because PostgreSQL could not store them (a NUL, a lone
    surrogate): names are decoration, so the event is kept without them."""
    if "userName" not in payload and "userType" not in payload and "team" not in payload:
        return _NO_NAMES, 0  # the guide's userStatusChanged carries none
    names = tuple(observed_text(payload.get(field)) for field in _NAMES)
    return names, _dropped(payload, names)


def _dropped(raw: Mapping, kept: Sequence[str | None]) -> int:
    """How many non-blank text fields of ``raw`` observed_text refused (which, for
    text that is not blank, means: not storable)."""
    return sum(
        1
        for field, value in zip(_NAMES, kept, strict=True)
        if value is None and isinstance(raw.get(field), str) and raw[field].strip()
    )


def short(payload: object) -> str:
    """``payload`` as a log line shows it: its repr, cut to a few hundred characters."""
    text = repr(payload)
    return text if len(text) <= MAX_LOGGED_PAYLOAD else text[: MAX_LOGGED_PAYLOAD - 3] + "..."


def default_name(server_url: str) -> str:
    """The default listener name: this host and the server it listens to."""
    return f"{socket.gethostname()}:{re.sub(r'^https?://', '', server_url)}"


def spool_name(name: str) -> str:
    """A listener's name as a directory name (its spool's)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100] or "listener"
