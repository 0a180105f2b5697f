"""Summaries kept on write: sessions, time in status per UTC quarter-hour, each user's tail.

Three tables, maintained in the same transaction as every change to
`presence_transitions` by statement-level triggers (like the concurrency rollup's
invalidation of 0002, so no writer can forget them):

- `presence_sessions`: every session of positive length (DESIGN "Session"), its
  start and its end (null while it is still open).
- `presence_status_days`: per user, UTC day and present status, the cumulative
  microseconds spent in that status at each UTC quarter-hour boundary of the day
  (`cum[k + 1]` = microseconds in `[midnight, midnight + 15 k min)`), counting the
  segments that have ended (a following transition exists).
- `presence_status_tails`: per user, the status of the last transition (by
  `(occurred_at, id)`) and its time: the open segment, which lasts until "now".

A write touching a user from `m` on recomputes that user's summaries from the
last transition before `m`: the segment there is known (from the tail when the
write only appends, the common case, else from one index probe), the old and
new segments after it give a delta that is added to the quarter-hour arrays,
and the sessions after it are rebuilt. Users are locked (an advisory lock per
user) for the recomputation, so concurrent writers see each other's results.
The existing rows are summarised by the same code, 500 users at a time.

`presence_rollup_state` gets rows `sessions` and `status_days` with `valid_until`
9999-12-31 (kept on write: valid for everything written; not 'infinity', which
Python's datetime cannot hold). See docs/analytics.md.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Work tables of one recomputation, private to the session.
_PREPARE = """
create function presence_summaries_prepare() returns void
language plpgsql as $$
begin
    if to_regclass('pg_temp.presence_sum_base') is null then
        create temporary table presence_sum_new (
            user_id text not null, id bigint primary key, status text not null,
            occurred_at timestamptz not null) on commit delete rows;
        create temporary table presence_sum_old (
            user_id text not null, id bigint not null, status text not null,
            occurred_at timestamptz not null) on commit delete rows;
        create temporary table presence_sum_base (
            user_id text primary key, m timestamptz not null, a timestamptz,
            a_status text, s0 timestamptz, fast boolean not null default false)
            on commit delete rows;
        create temporary table presence_sum_rows (
            user_id text not null, id bigint not null, status text not null,
            occurred_at timestamptz not null, in_new boolean not null,
            in_old boolean not null) on commit delete rows;
        create temporary table presence_sum_delta (
            user_id text not null, day date not null, status text not null,
            cum bigint[] not null) on commit delete rows;
    end if;
end
$$
"""

# Recompute the summaries of the users in presence_sum_base (user_id, m: the
# earliest time touched). With all_new, every row of those users is new (the
# first build); otherwise presence_sum_new / presence_sum_old hold the rows the
# statement inserted / removed.
_APPLY = """
create function presence_summaries_apply(all_new boolean) returns void
language plpgsql as $$
begin
    -- one recomputation per user at a time; locks taken in one global order
    perform pg_advisory_xact_lock(20563, h)
    from (select distinct hashtext(user_id) as h from presence_sum_base order by 1) k;

    -- the segment in effect just before m: from the tail when the write only appends
    update presence_sum_base b set a = t.since, a_status = t.status, fast = true
    from presence_status_tails t
    where t.user_id = b.user_id and t.since < b.m and not all_new;
    -- a user never seen before (no tail) has only the new rows
    update presence_sum_base b set fast = true
    where not all_new
      and not exists (select 1 from presence_status_tails t where t.user_id = b.user_id)
      and not exists (select 1 from presence_sum_old o where o.user_id = b.user_id);
    update presence_sum_base b set (a, a_status) = (
        select x.occurred_at, x.status from presence_transitions x
        where x.user_id = b.user_id and x.occurred_at < b.m
        order by x.occurred_at desc, x.id desc limit 1)
    where not b.fast;
    update presence_sum_base b set s0 = (
        select s.started_at from presence_sessions s
        where s.user_id = b.user_id and s.started_at <= b.a
          and (s.ended_at is null or s.ended_at > b.a)
        order by s.started_at desc limit 1)
    where b.a_status <> 'offline';

    -- the rows from m on, as they are now (in_new) and as they were (in_old)
    insert into presence_sum_rows
    select n.user_id, n.id, n.status, n.occurred_at, true, false
    from presence_sum_new n join presence_sum_base b using (user_id) where b.fast;
    insert into presence_sum_rows
    select b.user_id, x.id, x.status, x.occurred_at, true,
           not all_new and not exists (select 1 from presence_sum_new n where n.id = x.id)
    from presence_sum_base b cross join lateral (
        select x.id, x.status, x.occurred_at from presence_transitions x
        where x.user_id = b.user_id and x.occurred_at >= b.m) x
    where not b.fast;
    insert into presence_sum_rows
    select o.user_id, o.id, o.status, o.occurred_at, false, true from presence_sum_old o;

    -- time in status: the new segments from a on, minus the old ones, per quarter-hour
    insert into presence_sum_delta
    with pts as (
        select user_id, t, status, sign from (
            select distinct on (user_id, occurred_at) user_id, occurred_at as t, status,
                   1 as sign
            from presence_sum_rows where in_new order by user_id, occurred_at, id desc) n
        union all
        select user_id, t, status, sign from (
            select distinct on (user_id, occurred_at) user_id, occurred_at as t, status,
                   -1 as sign
            from presence_sum_rows where in_old order by user_id, occurred_at, id desc) o
        union all
        select user_id, a, a_status, s from presence_sum_base, (values (1), (-1)) v(s)
        where a is not null
    ),
    seg as (
        -- times as integer microseconds since 1970 (exact: date_part's double has
        -- sub-microsecond precision for any date a log holds), quarter-hours as integers
        select user_id, status, sign, us, nxt, floor(us / 900000000.0)::bigint as q0,
               floor((nxt - 1) / 900000000.0)::bigint as q1
        from (
            select user_id, status, sign,
                   round(date_part('epoch', t) * 1000000)::bigint as us,
                   round(date_part('epoch', lead(t) over (partition by user_id, sign
                                                          order by t)) * 1000000)::bigint as nxt
            from pts
        ) x
        where nxt is not null and status <> 'offline'
    ),
    piece as (
        select s.user_id, s.status,
               -- floor division, also before 1970: shifted by a multiple of 96 first
               date '1970-01-01' + ((q + 96000000000) / 96 - 1000000000)::int as day,
               ((q + 96000000000) % 96)::int as k,
               s.sign * (least(s.nxt, (q + 1) * 900000000) - greatest(s.us, q * 900000000)) as v
        from seg s cross join lateral generate_series(s.q0, s.q1) q
    ),
    delta as (
        select user_id, day, status, k, sum(v) as v from piece
        group by user_id, day, status, k having sum(v) <> 0
    ),
    run as (
        select user_id, day, status, k, v::bigint as v, sum(v) over w as s,
               lag(k, 1, -1) over w as k_prev, lead(k) over w as k_next
        from delta window w as (partition by user_id, day, status order by k)
    )
    -- cum is piecewise constant: the running sum before each touched quarter, up to it
    select user_id, day, status, presence_array_cat(
        array_fill((s - v)::bigint, array[k - k_prev])
        || case when k_next is null then array_fill(s::bigint, array[96 - k])
                else '{}'::bigint[] end
        order by k)
    from run
    group by user_id, day, status;

    insert into presence_status_days as sd (user_id, day, status, cum)
    select user_id, day, status, cum from presence_sum_delta
    on conflict (user_id, day, status) do update set cum = (
        -- a function scan yields the elements in order: no sort needed
        select array_agg(x + y) from unnest(sd.cum, excluded.cum) u(x, y));
    delete from presence_status_days sd using presence_sum_delta d
    where sd.user_id = d.user_id and sd.day = d.day and sd.status = d.status
      and sd.cum[97] = 0;

    -- the tail: the last row now
    insert into presence_status_tails as t (user_id, status, since)
    select b.user_id, coalesce(l.status, b.a_status), coalesce(l.occurred_at, b.a)
    from presence_sum_base b left join (
        select distinct on (user_id) user_id, occurred_at, status from presence_sum_rows
        where in_new order by user_id, occurred_at desc, id desc) l using (user_id)
    where coalesce(l.occurred_at, b.a) is not null
    on conflict (user_id) do update set status = excluded.status, since = excluded.since;
    delete from presence_status_tails t using presence_sum_base b
    where t.user_id = b.user_id and b.a is null
      and not exists (select 1 from presence_sum_rows r where r.user_id = b.user_id and r.in_new);

    -- sessions: those not closed by a are rebuilt from the edges after it
    delete from presence_sessions s using presence_sum_base b
    -- (without a row before m, sessions ending by m are kept: months already pruned)
    where s.user_id = b.user_id
      and (s.ended_at is null or s.ended_at > coalesce(b.a, b.m));
    insert into presence_sessions (user_id, started_at, ended_at)
    with r as (
        select r.user_id, r.occurred_at as at, r.id, r.status <> 'offline' as present,
               lag(r.status <> 'offline', 1, coalesce(b.a_status <> 'offline', false))
                   over (partition by r.user_id order by r.occurred_at, r.id) as was
        from presence_sum_rows r join presence_sum_base b using (user_id)
        where r.in_new
    ),
    edge as (
        select user_id, at, id, present from r where present <> was
        union all
        select user_id, coalesce(s0, a), -1, true from presence_sum_base
        where a_status <> 'offline'
    ),
    paired as (
        select user_id, at, present, lead(at) over (partition by user_id order by at, id) as nxt
        from edge
    )
    select user_id, at, nxt from paired where present and (nxt is null or nxt > at);

    delete from presence_sum_rows;
    delete from presence_sum_delta;
    delete from presence_sum_base;
    delete from presence_sum_new;
    delete from presence_sum_old;
end
$$
"""

_TRIGGER_FUNCTION = """
create function presence_summaries_on_write() returns trigger
language plpgsql as $$
begin
    if tg_op = 'TRUNCATE' then
        truncate presence_sessions, presence_status_days, presence_status_tails;
        return null;
    end if;
    perform presence_summaries_prepare();
    if tg_op in ('INSERT', 'UPDATE') then
        insert into presence_sum_new
        select user_id, id, status, occurred_at from presence_new_rows;
    end if;
    if tg_op in ('DELETE', 'UPDATE') then
        insert into presence_sum_old
        select user_id, id, status, occurred_at from presence_old_rows;
    end if;
    insert into presence_sum_base (user_id, m)
    select user_id, min(occurred_at) from (
        select user_id, occurred_at from presence_sum_new
        union all select user_id, occurred_at from presence_sum_old) x
    group by user_id;
    if found then
        perform presence_summaries_apply(false);
    end if;
    return null;
end
$$
"""

# The first build: every user's rows, 500 users at a time, by the same function.
_BACKFILL = """
do $$
declare
    chunk text[];
begin
    perform presence_summaries_prepare();
    for chunk in
        select array_agg(user_id order by user_id) from (
            select user_id, (row_number() over (order by user_id) - 1) / 500 as g
            from (select distinct user_id from presence_transitions) u) x
        group by g order by g
    loop
        insert into presence_sum_base (user_id, m)
        select unnest(chunk), '-infinity'::timestamptz;
        perform presence_summaries_apply(true);
    end loop;
end
$$
"""

_TRIGGERS = (
    ("insert", "referencing new table as presence_new_rows"),
    ("delete", "referencing old table as presence_old_rows"),
    ("update", "referencing old table as presence_old_rows new table as presence_new_rows"),
    ("truncate", ""),
)


def upgrade() -> None:
    op.execute(
        "create aggregate presence_array_cat(bigint[])"
        " (sfunc = array_cat, stype = bigint[], initcond = '{}')"
    )
    op.create_table(
        "presence_sessions",
        sa.Column("user_id", sa.Text(), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "presence_status_days",
        sa.Column("user_id", sa.Text(), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("status", sa.Text(), primary_key=True),
        sa.Column("cum", sa.ARRAY(sa.BigInteger()), nullable=False),
    )
    op.create_table(
        "presence_status_tails",
        sa.Column("user_id", sa.Text(), primary_key=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(_PREPARE)
    op.execute(_APPLY)
    op.execute(_TRIGGER_FUNCTION)
    op.execute(_BACKFILL)
    for event, referencing in _TRIGGERS:
        op.execute(
            f"create trigger presence_summaries_on_{event} after {event} on presence_transitions"
            f" {referencing} for each statement execute function presence_summaries_on_write()"
        )
    op.execute(
        "insert into presence_rollup_state (name, valid_until) values"
        " ('sessions', timestamptz '9999-12-31 00:00:00+00'),"
        " ('status_days', timestamptz '9999-12-31 00:00:00+00')"
    )


def downgrade() -> None:
    for event, _ in _TRIGGERS:
        op.execute(f"drop trigger presence_summaries_on_{event} on presence_transitions")
    op.execute("delete from presence_rollup_state where name in ('sessions', 'status_days')")
    op.execute("drop function presence_summaries_on_write()")
    op.execute("drop function presence_summaries_apply(boolean)")
    op.execute("drop function presence_summaries_prepare()")
    op.drop_table("presence_status_tails")
    op.drop_table("presence_status_days")
    op.drop_table("presence_sessions")
    op.execute("drop aggregate presence_array_cat(bigint[])")
