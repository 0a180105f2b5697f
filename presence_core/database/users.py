"""Manage users: `presence users import FILE.csv` sets teams, names and types.

The CSV has a header line naming its columns: `user_id` and `team` required,
`user_name` and `user_type` optional, in any order. Users not yet known are
created (offline). An empty `user_name` or `user_type` cell leaves that field as
it is; an empty `team` cell clears the team. A malformed file is refused with
the line number, and nothing is changed: the whole file is one transaction.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, text

from presence_core.database import storage
from presence_core.errors import PresenceError
from presence_core.protocol import unstorable

REQUIRED = ("user_id", "team")
OPTIONAL = ("user_name", "user_type")


@dataclass(frozen=True)
class UserRow:
    """One line of the import file."""

    user_id: str
    team: str | None
    user_name: str | None
    user_type: str | None


def parse_users_csv(lines: Iterable[str], name: str = "input") -> list[UserRow]:
    """Parse and validate the whole file; raise PresenceError naming the first bad line."""
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise PresenceError(f"{name}: empty file; expected a header user_id,team") from None
    except csv.Error as exc:
        raise PresenceError(f"{name}, line 1: {exc}") from None
    columns = [c.strip().lower() for c in header]
    unknown = [c for c in columns if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise PresenceError(
            f"{name}, line 1: unknown column {unknown[0]!r}; expected user_id,team"
            f"[,user_name,user_type]"
        )
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise PresenceError(f"{name}, line 1: missing column {missing[0]!r}")
    if len(set(columns)) != len(columns):
        raise PresenceError(f"{name}, line 1: a column is named twice")
    rows: list[UserRow] = []
    seen: dict[str, int] = {}
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(columns):
                raise PresenceError(
                    f"{name}, line {line}: {len(fields)} fields, expected {len(columns)}"
                )
            record = {c: f.strip() for c, f in zip(columns, fields, strict=True)}
            for column, value in record.items():
                bad = unstorable(value)
                if bad:
                    raise PresenceError(f"{name}, line {line}: {column} holds {bad}")
            try:
                user_id = storage.user_id_text(record["user_id"])
            except ValueError as exc:
                raise PresenceError(f"{name}, line {line}: {exc}") from None
            if user_id in seen:
                raise PresenceError(
                    f"{name}, line {line}: user {user_id!r} already given on line {seen[user_id]}"
                )
            seen[user_id] = line
            rows.append(
                UserRow(
                    user_id=user_id,
                    team=record["team"] or None,
                    user_name=record.get("user_name") or None,
                    user_type=record.get("user_type") or None,
                )
            )
    except csv.Error as exc:
        raise PresenceError(f"{name}, line {reader.line_num}: {exc}") from None
    return rows


_STAGE = """
create temporary table if not exists presence_users_import (
    user_id text not null, team text, user_name text, user_type text
) on commit drop
"""

_UPSERT = """
insert into presence_users (user_id, team, user_name, user_type)
select user_id, team, user_name, user_type from presence_users_import
on conflict (user_id) do update set
    team = excluded.team,
    user_name = coalesce(excluded.user_name, presence_users.user_name),
    user_type = coalesce(excluded.user_type, presence_users.user_type)
"""


def import_users(engine: Engine, rows: list[UserRow]) -> tuple[int, int]:
    """Apply ``rows`` in one transaction; returns (users updated, users created)."""
    with engine.begin() as conn:
        before = conn.execute(
            text("select count(*) from presence_users where user_id = any(:ids)"),
            {"ids": [r.user_id for r in rows]},
        ).scalar_one()
        conn.execute(text(_STAGE))
        storage.copy_rows(
            conn,
            "presence_users_import",
            ("user_id", "team", "user_name", "user_type"),
            ((r.user_id, r.team, r.user_name, r.user_type) for r in rows),
        )
        conn.execute(text(_UPSERT))
    return before, len(rows) - before
