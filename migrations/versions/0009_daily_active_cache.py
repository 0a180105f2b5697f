"""Daily active users of whole past local days, cached per time zone and kept exact.

Counting distinct active users per local day reads every session of the period
(about one row per user and day), so a year of 5,000 users costs seconds at every
view. A past local day's count changes only when a write touches an instant
before that day's end (the status in force at an instant is the last transition
at or before it). So `presence_daily_active` keeps, per zone and local day, the
count computed once from the summaries, with the day's end; the trigger of 0002
now lowers the `dirty_from` of a second state row, `daily_active`, as well as the
concurrency rollup's, and a reader first deletes the cached days ending after it
(a truncate sets it to -infinity: everything goes). Writers need no change and pay
one more row update per statement. The counts are of the users in presence_users, so
a user added or deleted there while its transitions are already stored marks the
cache from the user's first transition (a trigger on presence_users).

The days are computed on read (presence_core.analytics.daily_active), not on write:
a day is a local day of some zone, and which zones are asked for is known only then.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
create or replace function presence_rollup_invalidate() returns trigger
language plpgsql as $$
declare
    touched timestamptz;
begin
    if tg_op = 'TRUNCATE' then
        -- nothing left: the rollup is rebuilt from scratch, every cached day goes
        update presence_rollup_state set valid_until = null, dirty_from = null
        where name = 'concurrency';
        update presence_rollup_state set dirty_from = '-infinity'
        where name = 'daily_active';
        return null;
    elsif tg_op = 'INSERT' then
        select min(occurred_at) into touched from presence_new_rows;
    elsif tg_op = 'DELETE' then
        select min(occurred_at) into touched from presence_old_rows;
    else
        select least((select min(occurred_at) from presence_old_rows),
                     (select min(occurred_at) from presence_new_rows)) into touched;
    end if;
    if touched is not null then
        update presence_rollup_state
        set dirty_from = least(coalesce(dirty_from, touched), touched)
        where name in ('concurrency', 'daily_active');
    end if;
    return null;
end
$$
"""

# A user who enters or leaves presence_users with transitions already stored changes
# the counts from their first transition on (the counts are of the users listed there;
# writers add a user with its first rows, so this finds nothing in the usual case).
_USERS_FUNCTION = """
create function presence_users_invalidate_daily_active() returns trigger
language plpgsql as $$
declare
    touched timestamptz;
begin
    if tg_op = 'INSERT' then
        select min(f.first) into touched from presence_new_users n
        cross join lateral (select min(t.occurred_at) as first from presence_transitions t
                            where t.user_id = n.user_id) f;
    else
        select min(f.first) into touched from presence_old_users o
        cross join lateral (select min(t.occurred_at) as first from presence_transitions t
                            where t.user_id = o.user_id) f;
    end if;
    if touched is not null then
        update presence_rollup_state
        set dirty_from = least(coalesce(dirty_from, touched), touched)
        where name = 'daily_active';
    end if;
    return null;
end
$$
"""

# 0002's function, restored by the downgrade
_FUNCTION_0002 = _FUNCTION.replace(
    """
        update presence_rollup_state set dirty_from = '-infinity'
        where name = 'daily_active';""",
    "",
).replace("where name in ('concurrency', 'daily_active');", "where name = 'concurrency';")


def upgrade() -> None:
    op.create_table(
        "presence_daily_active",
        sa.Column("tz", sa.Text(), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("day_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active_users", sa.Integer(), nullable=False),
    )
    op.execute("insert into presence_rollup_state (name) values ('daily_active')")
    op.execute(_FUNCTION)
    op.execute(_USERS_FUNCTION)
    op.execute(
        "create trigger presence_users_daily_active_on_insert after insert on presence_users"
        " referencing new table as presence_new_users"
        " for each statement execute function presence_users_invalidate_daily_active()"
    )
    op.execute(
        "create trigger presence_users_daily_active_on_delete after delete on presence_users"
        " referencing old table as presence_old_users"
        " for each statement execute function presence_users_invalidate_daily_active()"
    )


def downgrade() -> None:
    for event in ("insert", "delete"):
        op.execute(f"drop trigger presence_users_daily_active_on_{event} on presence_users")
    op.execute("drop function presence_users_invalidate_daily_active()")
    op.execute(_FUNCTION_0002)
    op.execute("delete from presence_rollup_state where name = 'daily_active'")
    op.drop_table("presence_daily_active")
