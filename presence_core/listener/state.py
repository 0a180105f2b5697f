"""What the listener believes about each user, and what each event means given that.

:class:`UserTracker` holds no connection and does no I/O: it is given events and
the moments they arrived, and answers with the records to write (a
:class:`~presence_core.database.storage.Transition` when a user's status changed, a
:class:`~presence_core.database.storage.Sighting` when it repeated). The listener
feeds it from the socket and hands its answers to the write pipeline; tests feed
it directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from presence_core.database.storage import OFFLINE, Sighting, Transition, UserState
from presence_core.listener.decisions import (
    UserView,
    event_time,
    moved_after,
    payload_names,
    plan_reconcile,
)
from presence_core.protocol import (
    MAX_ID,
    MAX_REASON,
    OnlineUser,
    observed_text,
    parse_status_changed,
)

__all__ = ["MAX_KNOWN_STATUSES", "UserTracker"]

# At most this many distinct status names are remembered as already checked.
MAX_KNOWN_STATUSES = 64


class UserTracker:
    """Each user's status, since when, and last sign of life, as the listener believes.

    ``quick`` lets :meth:`status_changed` accept the common well-formed event in a
    few cheap steps (a known user, a status already seen valid, an ISO ``lastSeen``
    in UTC); it gives the same answer as the full parser (a property test holds
    the two together). ``known_statuses`` are the status names seen valid, exactly
    as sent.
    """

    def __init__(self, *, quick: bool = True) -> None:
        self.quick = quick
        self.views: dict[str, UserView] = {}
        self.known_statuses: set[str] = set()
        self._named: set[str] = set()  # users whose name the database has
        self.names_dropped = 0  # names, types, teams dropped as not storable (NUL...)
        self._want_names = False

    def __len__(self) -> int:
        return len(self.views)

    def view(self, user_id: str) -> UserView | None:
        """What is believed about ``user_id`` now (None: never seen, so offline)."""
        return self.views.get(user_id)

    def load(self, rows: Mapping[str, UserState]) -> None:
        """Believe the database: its ``presence_users`` rows, by user id."""
        self.views = {
            uid: UserView(row.status, row.status_since, row.last_seen) for uid, row in rows.items()
        }
        self._named = {uid for uid, row in rows.items() if row.user_name}

    def take_names_wanted(self) -> bool:
        """True once after a user came online without a name (the listener then asks
        for the online list, where servers such as the guide's send names)."""
        wanted, self._want_names = self._want_names, False
        return wanted

    # -- events --------------------------------------------------------------------

    def status_changed(
        self, payload: object, received_at: datetime, source: str | None
    ) -> Transition | Sighting:
        """The record one ``userStatusChanged`` payload makes; the view moves with it.

        Raises :class:`~presence_core.protocol.ProtocolError` for a payload that is
        not a valid event (the caller counts and logs it; nothing is written).
        """
        quick = self._quick_change(payload) if self.quick else None
        if quick is not None:
            uid, status, last_seen = quick
            occurred, note = event_time(last_seen, None, received_at)
        else:
            change = parse_status_changed(payload)  # the protocol's checks, as the server's
            uid, status = change.user_id, change.status
            occurred, note = event_time(change.last_seen, change.last_seen_problem, received_at)
            if (
                self.quick
                and payload.get("status") == status
                and len(self.known_statuses) < MAX_KNOWN_STATUSES
            ):
                self.known_statuses.add(status)
        names, dropped = payload_names(payload)
        self.names_dropped += dropped
        if names[1]:
            self._named.add(uid)
        view = self.views.get(uid)
        if (view.status if view else OFFLINE) == status:
            if view is not None and (view.last_seen is None or occurred > view.last_seen):
                view.last_seen = occurred
            return Sighting(uid, occurred, *names)
        reason = observed_text(payload.get("reason"), MAX_REASON) if "reason" in payload else None
        at = moved_after(view, occurred)
        if at != occurred:
            note = "; ".join(filter(None, [note, "moved after the previous transition"]))
        if note:
            reason = "; ".join(filter(None, [reason, note]))
        self.views[uid] = UserView(status, at, at)
        if status != OFFLINE and uid not in self._named:
            self._named.add(uid)  # asked once: a server that has no name will not get asked again
            self._want_names = True
        return Transition(uid, status, at, received_at, False, reason, source, *names)

    def _quick_change(self, payload: object) -> tuple[str, str, datetime] | None:
        """(user id, status, lastSeen) of the common well-formed event, or None to send
        the event through the full parser, which gives the same answer for these and
        explains everything else."""
        if type(payload) is not dict:
            return None
        uid = payload.get("userId")
        if type(uid) is int:
            uid = str(uid)
            if len(uid) > MAX_ID:
                return None
        elif type(uid) is not str or uid not in self.views:
            return None
        status = payload.get("status")
        raw = payload.get("lastSeen")
        if type(status) is not str or status not in self.known_statuses:
            return None
        if type(raw) is not str or len(raw) > 64:
            return None
        try:
            last_seen = datetime.fromisoformat(raw)
        except ValueError:
            return None
        if last_seen.tzinfo is not UTC:
            return None
        return uid, status, last_seen

    # -- the online list -----------------------------------------------------------

    def reconcile(
        self,
        users: Iterable[OnlineUser],
        *,
        gap_start: datetime | None,
        reconnect_at: datetime,
        received_at: datetime,
        source: str | None,
        left: Mapping[str, datetime] | None = None,
    ) -> list[Transition | Sighting]:
        """The rows that bring what is believed in line with a server's online list
        (:func:`~presence_core.listener.decisions.plan_reconcile`); believed from now on."""
        rows = plan_reconcile(
            self.views,
            users,
            gap_start=gap_start,
            reconnect_at=reconnect_at,
            received_at=received_at,
            source=source,
            left=left,
        )
        for row in rows:
            if isinstance(row, Transition):
                self.views[row.user_id] = UserView(row.status, row.occurred_at, row.occurred_at)
            if row.user_name:
                self._named.add(row.user_id)
        return rows

    def names_seen(self, users: Iterable[OnlineUser], received_at: datetime) -> list[Sighting]:
        """Sightings carrying the names of an online list asked for names only (no
        status changes: those are the events' to tell)."""
        sightings = []
        for user in users:
            if user.user_name:
                self._named.add(user.user_id)
            view = self.views.get(user.user_id)
            if view is not None and view.status == user.status:
                sightings.append(
                    Sighting(user.user_id, received_at, user.user_type, user.user_name, user.team)
                )
        return sightings
