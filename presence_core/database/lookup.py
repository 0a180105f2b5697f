"""What the database knows of users who are not connected: one query for many ids.

The presence server answers ``getUsersStatus`` (and a version-2 ``subscribe`` by
``userIds``) from memory for present users and, for the rest, from
``presence_users`` through :func:`stored_users`: one ``SELECT … WHERE user_id =
ANY(…)`` however many ids are asked, never one query per id.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from presence_core.database import tables


@dataclass(frozen=True)
class StoredUser:
    """A user's row in ``presence_users``; ``last_seen`` and ``status_since`` are None
    for a user who hides them (``hidden``: ``hide_last_seen``, no individual time
    leaves the database)."""

    user_id: str
    status: str
    last_seen: datetime | None
    status_since: datetime | None
    team: str | None
    user_type: str | None
    user_name: str | None
    hidden: bool = False


def stored_users(engine: Engine, keys: Collection[str]) -> dict[str, StoredUser]:
    """The stored rows of ``keys`` (user ids as text) that exist, by id: one query."""
    if not keys:
        return {}
    users = tables.users
    query = select(
        users.c.user_id,
        users.c.status,
        users.c.last_seen,
        users.c.status_since,
        users.c.team,
        users.c.user_type,
        users.c.user_name,
        users.c.hide_last_seen,
    ).where(users.c.user_id.in_(list(keys)))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return {
        row.user_id: StoredUser(
            user_id=row.user_id,
            status=row.status,
            last_seen=None if row.hide_last_seen else row.last_seen,
            status_since=None if row.hide_last_seen else row.status_since,
            team=row.team,
            user_type=row.user_type,
            user_name=row.user_name,
            hidden=row.hide_last_seen,
        )
        for row in rows
    }
