"""The latest changes of status, newest first: the Live page's feed ("who came, left, went away").

One row per transition with the status it replaced, and :func:`change_kind` naming
the change the way a manager reads it. Users who hide their last seen are left out
unless ``include_hidden``: a feed entry is an individual time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from presence_core.analytics.common import DEFAULT_AVAILABLE, OFFLINE, read_frame

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CAME",
    "CHANGED",
    "FEED_COLUMNS",
    "LEFT",
    "RETURNED",
    "WENT_AWAY",
    "change_kind",
    "latest_changes",
]

CAME = "came"
LEFT = "left"
WENT_AWAY = "went away"
RETURNED = "back"
CHANGED = "changed"

FEED_COLUMNS = (
    "occurred_at",
    "user_id",
    "user_name",
    "user_type",
    "team",
    "status",
    "previous",
    "change",
    "inferred",
)


def change_kind(
    previous: str | None, status: str, available: Sequence[str] = DEFAULT_AVAILABLE
) -> str:
    """What a change from ``previous`` (None: never seen before) to ``status`` means:

    - :data:`CAME`: from offline (or nothing) to any present status;
    - :data:`LEFT`: to offline;
    - :data:`WENT_AWAY`: from an available status to a present one that is not;
    - :data:`RETURNED`: from a present, unavailable status to an available one;
    - :data:`CHANGED`: anything else (one unavailable status to another).
    """
    was_present = previous is not None and previous != OFFLINE
    if status == OFFLINE:
        return LEFT
    if not was_present:
        return CAME
    if previous in available and status not in available:
        return WENT_AWAY
    if previous not in available and status in available:
        return RETURNED
    return CHANGED


_FEED_SQL = """
select t.occurred_at, t.user_id, u.user_name, u.user_type, u.team, t.status, p.status as previous,
       t.inferred
from (
    select t.id, t.user_id, t.status, t.occurred_at, t.inferred
    from presence_transitions t
    join presence_users u on u.user_id = t.user_id
    where t.occurred_at >= cast(:since as timestamptz)
      and (cast(:team as text) is null or u.team = cast(:team as text))
      and (cast(:user_type as text) is null or u.user_type = cast(:user_type as text))
      and (cast(:include_hidden as boolean) or not u.hide_last_seen)
    order by t.occurred_at desc, t.id desc
    limit :limit
) t
join presence_users u on u.user_id = t.user_id
left join lateral (
    select q.status from presence_transitions q
    where q.user_id = t.user_id
      and (q.occurred_at < t.occurred_at or (q.occurred_at = t.occurred_at and q.id < t.id))
    order by q.occurred_at desc, q.id desc
    limit 1
) p on true
order by t.occurred_at desc, t.id desc"""


def latest_changes(
    engine: Engine,
    limit: int = 50,
    within: timedelta = timedelta(hours=12),
    team: str | None = None,
    user_type: str | None = None,
    available_statuses: Sequence[str] = DEFAULT_AVAILABLE,
    include_hidden: bool = False,
) -> pd.DataFrame:
    """The ``limit`` latest transitions of the last ``within``, newest first:
    ``occurred_at, user_id, user_name, user_type, team, status, previous, change,
    inferred`` (``previous`` is the status it replaced, None for a first sighting;
    ``change`` is :func:`change_kind`). Filtered by ``team`` and ``user_type``;
    users who hide their last seen are left out unless ``include_hidden``.

    Reads at most ``limit`` rows through the ``occurred_at`` index, whatever the
    number of users, so the page never ships more than it shows."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    params = {
        "since": datetime.now(UTC) - within,
        "team": team,
        "user_type": user_type,
        "include_hidden": include_hidden,
        "limit": int(limit),
    }
    frame = read_frame(engine, _FEED_SQL, params, utc=("occurred_at",))
    available = tuple(available_statuses)
    previous = frame["previous"].astype(object)
    frame["previous"] = previous.where(previous.notna(), None)
    frame["change"] = [
        change_kind(p, s, available)
        for p, s in zip(frame["previous"], frame["status"], strict=True)
    ]
    return frame[list(FEED_COLUMNS)]
