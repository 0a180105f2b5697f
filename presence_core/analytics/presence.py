"""Now: who is present, how many, and when each user was last seen (``presence_users``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text

from presence_core.analytics.common import read_frame
from presence_core.errors import PresenceError

if TYPE_CHECKING:
    import pandas as pd


_SHOWN = "(cast(:include_hidden as boolean) or not hide_last_seen)"


def current_presence(
    engine: Engine,
    team: str | None = None,
    user_type: str | None = None,
    include_hidden: bool = False,
) -> pd.DataFrame:
    """Who is present now: ``user_id, user_name, user_type, team, status, status_since,
    last_seen`` for every user whose stored status is not ``offline``, longest present
    first. Users who hide their last seen are listed (being present is not a time),
    but their ``status_since`` and ``last_seen`` are empty unless ``include_hidden``."""
    sql = f"""
    select user_id, user_name, user_type, team, status,
           case when {_SHOWN} then status_since end as status_since,
           case when {_SHOWN} then last_seen end as last_seen
    from presence_users
    where status <> 'offline'
      and (cast(:team as text) is null or team = cast(:team as text))
      and (cast(:user_type as text) is null or user_type = cast(:user_type as text))
    order by (case when {_SHOWN} then status_since end) nulls last, user_id"""
    params = {"team": team, "user_type": user_type, "include_hidden": include_hidden}
    return read_frame(engine, sql, params, utc=("status_since", "last_seen"))


def count_by(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows of an already loaded ``frame`` (e.g. :func:`current_presence`) counted
    by ``column``: columns ``<column>, present``, largest first, missing values
    counted under None. A page's list and its counts then always agree."""
    counts = frame[column].value_counts(dropna=False, sort=False)
    out = counts.rename_axis(column).reset_index(name="present")
    out[column] = out[column].astype(object).where(out[column].notna(), None)
    out = out.sort_values(["present", column], ascending=[False, True], na_position="last")
    return out.reset_index(drop=True)


_COUNT_BY = {"status": "status", "user_type": "user_type", "type": "user_type", "team": "team"}


def presence_counts(engine: Engine, by: str = "status") -> pd.DataFrame:
    """Users present now counted by ``by`` (``status``, ``user_type`` or ``team``):
    columns ``<by>, present`` (missing values grouped under None), largest first."""
    column = _COUNT_BY.get(by)
    if column is None:
        raise PresenceError(f"cannot count by {by!r}; choose status, user_type or team")
    sql = f"""
    select {column}, count(*) as present from presence_users
    where status <> 'offline' group by {column} order by present desc, {column} nulls last"""
    return read_frame(engine, sql, {})


# The users a state read lists: teams, types and statuses (any of each; None: all),
# and a search for a part of the id or the name (case-insensitive, not a pattern).
_STATE_FILTER = """
      (cast(:teams as text[]) is null or team = any(cast(:teams as text[])))
  and (cast(:user_types as text[]) is null or user_type = any(cast(:user_types as text[])))
  and (cast(:statuses as text[]) is null or status = any(cast(:statuses as text[])))
  and (cast(:search as text) is null
       or strpos(lower(user_id), lower(cast(:search as text))) > 0
       or strpos(lower(coalesce(user_name, '')), lower(cast(:search as text))) > 0)"""


def _state_params(
    include_hidden: bool,
    search: str | None = None,
    teams: Iterable[str] | None = None,
    user_types: Iterable[str] | None = None,
    statuses: Iterable[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    def listed(values: Iterable[str] | None) -> list[str] | None:
        return None if values is None else [str(v) for v in values]

    return {
        "include_hidden": include_hidden,
        "search": search.strip() if search and search.strip() else None,
        "teams": listed(teams),
        "user_types": listed(user_types),
        "statuses": listed(statuses),
        **extra,
    }


def last_seen_table(
    engine: Engine,
    include_hidden: bool = False,
    search: str | None = None,
    teams: Iterable[str] | None = None,
    user_types: Iterable[str] | None = None,
    statuses: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Every user (or those matching the filters: any of ``teams``, ``user_types``,
    ``statuses``; ``search`` a part of the id or name): ``user_id, user_name,
    user_type, team, status, status_since, last_seen, hide_last_seen``, most
    recently seen first. Users who hide their last seen keep their row and status,
    but ``status_since`` and ``last_seen`` are empty unless ``include_hidden``."""
    sql = f"""
    select user_id, user_name, user_type, team, status,
           case when {_SHOWN} then status_since end as status_since,
           case when {_SHOWN} then last_seen end as last_seen,
           hide_last_seen
    from presence_users
    where {_STATE_FILTER}
    order by (case when {_SHOWN} then last_seen end) desc nulls last, user_id"""
    params = _state_params(include_hidden, search, teams, user_types, statuses)
    return read_frame(engine, sql, params, utc=("status_since", "last_seen"))


def away_users(
    engine: Engine,
    available_statuses: Iterable[str],
    longer_than: timedelta,
    team: str | None = None,
    user_type: str | None = None,
    include_offline: bool = False,
    include_hidden: bool = False,
) -> pd.DataFrame:
    """Users not in an available status for longer than ``longer_than`` (offline ones
    only with ``include_offline``): ``user_id, user_name, status, status_since``,
    away longest first. Users who hide their last seen are left out (their time is
    not known) unless ``include_hidden``."""
    sql = f"""
    select user_id, user_name, status, status_since from presence_users
    where {_STATE_FILTER}
      and {_SHOWN}
      and status <> all(cast(:avail as text[]))
      and (cast(:include_offline as boolean) or status <> 'offline')
      and status_since < now() - cast(:longer as interval)
    order by status_since, user_id"""
    params = _state_params(
        include_hidden,
        teams=None if team is None else [team],
        user_types=None if user_type is None else [user_type],
        avail=list(available_statuses),
        include_offline=include_offline,
        longer=longer_than,
    )
    return read_frame(engine, sql, params, utc=("status_since",))


def recently_left(
    engine: Engine,
    within: timedelta,
    team: str | None = None,
    user_type: str | None = None,
    include_hidden: bool = False,
) -> pd.DataFrame:
    """Offline users last seen less than ``within`` ago: ``user_id, user_name, team,
    status, last_seen``, most recent first; users who hide their last seen are left
    out unless ``include_hidden``."""
    sql = f"""
    select user_id, user_name, team, status, last_seen from presence_users
    where {_STATE_FILTER}
      and {_SHOWN}
      and status = 'offline'
      and last_seen >= now() - cast(:within as interval)
    order by last_seen desc, user_id"""
    params = _state_params(
        include_hidden,
        teams=None if team is None else [team],
        user_types=None if user_type is None else [user_type],
        within=within,
    )
    return read_frame(engine, sql, params, utc=("last_seen",))


def filter_choices(engine: Engine, include_hidden: bool = False) -> dict[str, list[str]]:
    """What the dashboard's filters offer: known ``team``, ``user_type``, current
    ``status`` values and ``user_id`` s, each sorted (missing values left out).
    Users who hide their last seen are not offered as a ``user_id`` to pick (their
    history would follow) unless ``include_hidden``; their team, type and status
    still count."""
    sql = f"""
    select 'team' as kind, team as value from presence_users where team is not null
    union select 'user_type', user_type from presence_users where user_type is not null
    union select 'status', status from presence_users where status is not null
    union select 'user_id', user_id from presence_users where {_SHOWN}"""
    found: dict[str, list[str]] = {"team": [], "user_type": [], "status": [], "user_id": []}
    with engine.connect() as conn:
        for kind, value in conn.execute(text(sql), {"include_hidden": include_hidden}):
            found[kind].append(str(value))
    return {kind: sorted(values) for kind, values in found.items()}


def user_names(engine: Engine, include_hidden: bool = False) -> dict[str, str]:
    """User id → name, for the users that have one (not those who hide their last
    seen, unless ``include_hidden``)."""
    sql = f"""
    select user_id, user_name from presence_users
    where user_name is not null and {_SHOWN}"""
    with engine.connect() as conn:
        rows = conn.execute(text(sql), {"include_hidden": include_hidden})
        return {str(uid): str(name) for uid, name in rows}
