"""Monthly partitions of presence_transitions on occurred_at, converting existing rows.

The table is renamed aside, a partitioned table takes its name (same columns,
the same unique key, which includes the partition key), one partition per UTC
month from the oldest row to three months ahead plus a default partition is
created, every row is copied across with its id, and the old table is dropped.
The conversion is one PL/pgSQL block, so `alembic upgrade head --sql` renders
exactly what an online upgrade runs. Identity columns on partitioned tables
need PostgreSQL 17, so `id` takes its values from a sequence (PostgreSQL 14+).
The concurrency rollup's triggers move to the new table after the copy: the
rows are the same, so the rollup stays valid.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = "id, user_id, status, occurred_at, received_at, inferred, reason, source"

_TRIGGERS = (
    ("insert", "referencing new table as presence_new_rows"),
    ("delete", "referencing old table as presence_old_rows"),
    ("update", "referencing old table as presence_old_rows new table as presence_new_rows"),
    ("truncate", ""),
)

_MONTHS = """
do $$
declare
    first_month date;
    last_month date;
    this_month date := date_trunc('month', now() at time zone 'UTC')::date;
    m date;
begin
    select date_trunc('month', min(occurred_at) at time zone 'UTC')::date,
           date_trunc('month', max(occurred_at) at time zone 'UTC')::date
      into first_month, last_month
      from presence_transitions_unpartitioned;
    first_month := least(coalesce(first_month, this_month), this_month);
    last_month := (greatest(coalesce(last_month, this_month), this_month)
                   + interval '3 months')::date;
    m := first_month;
    while m <= last_month loop
        execute format(
            'create table %I partition of presence_transitions for values from (%L) to (%L)',
            'presence_transitions_' || to_char(m, 'YYYY_MM'),
            to_char(m, 'YYYY-MM-DD') || ' 00:00:00+00',
            to_char((m + interval '1 month')::date, 'YYYY-MM-DD') || ' 00:00:00+00');
        m := (m + interval '1 month')::date;
    end loop;
end
$$
"""


def _drop_triggers(table: str) -> None:
    for event, _ in _TRIGGERS:
        op.execute(f"drop trigger if exists presence_rollup_on_{event} on {table}")


def _create_triggers(table: str) -> None:
    for event, referencing in _TRIGGERS:
        op.execute(
            f"create trigger presence_rollup_on_{event} after {event} on {table} {referencing}"
            " for each statement execute function presence_rollup_invalidate()"
        )


def upgrade() -> None:
    _drop_triggers("presence_transitions")
    op.execute("alter table presence_transitions rename to presence_transitions_unpartitioned")
    op.execute(
        "alter table presence_transitions_unpartitioned rename constraint "
        "uq_presence_transitions_event to uq_presence_transitions_event_unpartitioned"
    )
    op.execute(
        "alter index ix_presence_transitions_occurred_at "
        "rename to ix_presence_transitions_occurred_at_unpartitioned"
    )
    op.execute("create sequence presence_transition_ids as bigint")
    op.execute(
        """
        create table presence_transitions (
            id bigint not null default nextval('presence_transition_ids'),
            user_id text not null,
            status text not null,
            occurred_at timestamptz not null,
            received_at timestamptz not null,
            inferred boolean not null default false,
            reason text,
            source text,
            constraint uq_presence_transitions_event unique (user_id, occurred_at, status)
        ) partition by range (occurred_at)
        """
    )
    op.execute(
        "create index ix_presence_transitions_occurred_at on presence_transitions (occurred_at)"
    )
    op.execute("alter sequence presence_transition_ids owned by presence_transitions.id")
    op.execute(
        "create table presence_transitions_default partition of presence_transitions default"
    )
    op.execute(_MONTHS)
    op.execute(
        f"insert into presence_transitions ({_COLUMNS}) "
        f"select {_COLUMNS} from presence_transitions_unpartitioned"
    )
    op.execute(
        "select setval('presence_transition_ids', "
        "coalesce((select max(id) from presence_transitions), 0) + 1, false)"
    )
    op.execute("drop table presence_transitions_unpartitioned")
    _create_triggers("presence_transitions")


def downgrade() -> None:
    _drop_triggers("presence_transitions")
    op.execute("alter table presence_transitions rename to presence_transitions_partitioned")
    op.execute(
        "alter table presence_transitions_partitioned rename constraint "
        "uq_presence_transitions_event to uq_presence_transitions_event_partitioned"
    )
    op.execute(
        "alter index ix_presence_transitions_occurred_at "
        "rename to ix_presence_transitions_occurred_at_partitioned"
    )
    op.execute(
        """
        create table presence_transitions (
            id bigint generated by default as identity primary key,
            user_id text not null,
            status text not null,
            occurred_at timestamptz not null,
            received_at timestamptz not null,
            inferred boolean not null default false,
            reason text,
            source text,
            constraint uq_presence_transitions_event unique (user_id, occurred_at, status)
        )
        """
    )
    op.execute(
        "create index ix_presence_transitions_occurred_at on presence_transitions (occurred_at)"
    )
    op.execute(
        f"insert into presence_transitions ({_COLUMNS}) overriding system value "
        f"select {_COLUMNS} from presence_transitions_partitioned"
    )
    op.execute(
        "select setval(pg_get_serial_sequence('presence_transitions', 'id'), "
        "coalesce((select max(id) from presence_transitions), 0) + 1, false)"
    )
    op.execute("drop table presence_transitions_partitioned cascade")
    _create_triggers("presence_transitions")
