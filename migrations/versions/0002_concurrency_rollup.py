"""A per-minute rollup of concurrency, so long-range concurrency charts stay fast.

`presence_concurrency_minutes` holds, per UTC minute, the most users present at
once and the user-seconds present; it is computed by the same SQL as every
other concurrency figure (presence_core.analytics) and only read for minutes
known to be valid. `presence_rollup_state` says up to when it is valid; a
statement trigger on `presence_transitions` records the earliest time any
insert, update or delete touched (`dirty_from`; a truncate empties it), so late
or replayed rows make the rollup recompute from there. Writers need no change.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
create function presence_rollup_invalidate() returns trigger
language plpgsql as $$
declare
    touched timestamptz;
begin
    if tg_op = 'TRUNCATE' then
        -- nothing left: the rollup is rebuilt from scratch
        update presence_rollup_state set valid_until = null, dirty_from = null
        where name = 'concurrency';
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
        where name = 'concurrency';
    end if;
    return null;
end
$$
"""


def upgrade() -> None:
    op.create_table(
        "presence_concurrency_minutes",
        sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("peak", sa.Integer(), nullable=False),
        sa.Column("user_seconds", sa.Float(), nullable=False),
    )
    op.create_table(
        "presence_rollup_state",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("valid_until", sa.DateTime(timezone=True)),
        sa.Column("dirty_from", sa.DateTime(timezone=True)),
    )
    op.execute("insert into presence_rollup_state (name) values ('concurrency')")
    op.execute(_FUNCTION)
    op.execute(
        "create trigger presence_rollup_on_insert after insert on presence_transitions"
        " referencing new table as presence_new_rows"
        " for each statement execute function presence_rollup_invalidate()"
    )
    op.execute(
        "create trigger presence_rollup_on_delete after delete on presence_transitions"
        " referencing old table as presence_old_rows"
        " for each statement execute function presence_rollup_invalidate()"
    )
    op.execute(
        "create trigger presence_rollup_on_update after update on presence_transitions"
        " referencing old table as presence_old_rows new table as presence_new_rows"
        " for each statement execute function presence_rollup_invalidate()"
    )
    op.execute(
        "create trigger presence_rollup_on_truncate after truncate on presence_transitions"
        " for each statement execute function presence_rollup_invalidate()"
    )


def downgrade() -> None:
    for event in ("insert", "delete", "update", "truncate"):
        op.execute(f"drop trigger presence_rollup_on_{event} on presence_transitions")
    op.execute("drop function presence_rollup_invalidate()")
    op.drop_table("presence_rollup_state")
    op.drop_table("presence_concurrency_minutes")
