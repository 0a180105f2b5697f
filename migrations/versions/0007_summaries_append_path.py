"""Summaries kept on write, cheaper: an append path in one statement, linear array building.

Same tables and the same contents as 0005 (nothing is rebuilt: an upgrade only
replaces two functions). What changes is the cost of keeping them:

- **Appends** (every user of an insert has its new rows after its last stored
  one: the listener's, the server's and the history generator's usual write)
  are summarised by one statement reading the trigger's transition table
  directly: no work tables, no probe of the log, sessions closed and opened in
  place (the open one is closed by an update, new ones inserted) instead of
  deleted and rebuilt. Anything else (a late or out-of-order row, a delete, an
  update) takes 0005's general path, which gives the same result.
- **Cumulative arrays** are built by one `string_agg` of their runs and one
  parse (linear) instead of folding `array_cat` over the runs, which copied the
  growing array at every step (quadratic: 60 % of a generated history's cost).
- **Adding** a delta to a stored array is one array expression of 97 sums,
  evaluated in place, instead of a subquery unnesting both arrays per row.

Measured in docs/benchmarks.md (sections write-cost and analytics-*).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# stored cum (alias sd) + the delta (excluded), element by element, without a subquery
_ADD = "array[" + ", ".join(f"sd.cum[{i}] + excluded.cum[{i}]" for i in range(1, 98)) + "]"

# From delta(user_id, day, status, k, v) (microseconds v added to quarter-hour k),
# the cumulative arrays: cum is piecewise constant, the running sum before each
# touched quarter up to it, then the total to the end. Written as text in one pass.
_RUNS = """
    run as (
        select user_id, day, status, k, v::bigint as v, (sum(v) over w)::bigint as s,
               lag(k, 1, -1) over w as k_prev, lead(k) over w as k_next
        from delta window w as (partition by user_id, day, status order by k)
    ),
    arrays as (
        select user_id, day, status, ('{' || rtrim(string_agg(
            repeat((s - v)::text || ',', k - k_prev)
            || case when k_next is null then repeat(s::text || ',', 96 - k) else '' end,
            '' order by k), ',') || '}')::bigint[] as cum
        from run
        group by user_id, day, status
    )"""

# The segments of pts(user_id, t, status, sign) cut at UTC quarter-hours (0005's).
_PIECES = """
    seg as (
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
               date '1970-01-01' + ((q + 96000000000) / 96 - 1000000000)::int as day,
               ((q + 96000000000) % 96)::int as k,
               s.sign * (least(s.nxt, (q + 1) * 900000000) - greatest(s.us, q * 900000000)) as v
        from seg s cross join lateral generate_series(s.q0, s.q1) q
    ),
    delta as (
        select user_id, day, status, k, sum(v) as v from piece
        group by user_id, day, status, k having sum(v) <> 0
    ),"""

# 0005's general recomputation, with the two cheaper array steps.
_APPLY = f"""
create or replace function presence_summaries_apply(all_new boolean) returns void
language plpgsql as $$
begin
    perform pg_advisory_xact_lock(20563, h)
    from (select distinct hashtext(user_id) as h from presence_sum_base order by 1) k;

    update presence_sum_base b set a = t.since, a_status = t.status, fast = true
    from presence_status_tails t
    where t.user_id = b.user_id and t.since < b.m and not all_new;
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
    ),{_PIECES}{_RUNS}
    select user_id, day, status, cum from arrays;

    insert into presence_status_days as sd (user_id, day, status, cum)
    select user_id, day, status, cum from presence_sum_delta
    on conflict (user_id, day, status) do update set cum = {_ADD};
    delete from presence_status_days sd using presence_sum_delta d
    where sd.user_id = d.user_id and sd.day = d.day and sd.status = d.status
      and sd.cum[97] = 0;

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

    delete from presence_sessions s using presence_sum_base b
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

# An insert whose every user appends (new rows strictly after the user's tail, or
# a user with no rows yet): the segment before the new rows is the tail's, nothing
# stored after it changes, so the delta is the new closed segments only (never
# negative: no row to delete), the tail is the last new row, and sessions change
# only from the open one on. One statement, read straight from the transition table.
_APPEND = f"""
    with n as materialized (
        select user_id, id, status, occurred_at from presence_new_rows
    ),
    b as materialized (
        -- s0: the start of the open session (present at the tail), one index probe
        select u.user_id, t.since as a, t.status as a_status,
               case when t.status <> 'offline' then (
                   select s.started_at from presence_sessions s
                   where s.user_id = u.user_id and s.ended_at is null) end as s0
        from (select distinct user_id from n) u
        left join presence_status_tails t using (user_id)
    ),
    pts as (
        select user_id, a as t, a_status as status, 1 as sign from b where a is not null
        union all
        select * from (
            select distinct on (user_id, occurred_at) user_id, occurred_at, status, 1
            from n order by user_id, occurred_at, id desc) x
    ),{_PIECES}{_RUNS},
    days as (
        insert into presence_status_days as sd (user_id, day, status, cum)
        select user_id, day, status, cum from arrays
        on conflict (user_id, day, status) do update set cum = {_ADD}
    ),
    tails as (
        insert into presence_status_tails as t (user_id, status, since)
        select distinct on (user_id) user_id, status, occurred_at from n
        order by user_id, occurred_at desc, id desc
        on conflict (user_id) do update set status = excluded.status, since = excluded.since
    ),
    r as (
        select n.user_id, b.s0, n.occurred_at as at, n.id, n.status <> 'offline' as present,
               lag(n.status <> 'offline', 1, coalesce(b.a_status <> 'offline', false))
                   over (partition by n.user_id order by n.occurred_at, n.id) as was
        from n join b using (user_id)
    ),
    paired as (
        select user_id, s0, at, present,
               lead(at) over (partition by user_id order by at, id) as nxt,
               row_number() over (partition by user_id order by at, id) as i
        from r where present <> was
    ),
    closed as (
        -- present at the tail: the first edge closes the user's open session (by its
        -- whole key, so that the plan is an index probe per user whatever the estimates)
        update presence_sessions s set ended_at = p.at
        from paired p
        where p.i = 1 and not p.present and s.user_id = p.user_id and s.started_at = p.s0
    )
    insert into presence_sessions (user_id, started_at, ended_at)
    select user_id, at, nxt from paired where present and (nxt is null or nxt > at)"""

_TRIGGER_FUNCTION = f"""
create or replace function presence_summaries_on_write() returns trigger
language plpgsql as $$
begin
    if tg_op = 'TRUNCATE' then
        truncate presence_sessions, presence_status_days, presence_status_tails;
        return null;
    end if;
    if tg_op = 'INSERT' then
        -- one recomputation per user at a time; locks taken in one global order
        perform pg_advisory_xact_lock(20563, h)
        from (select distinct hashtext(user_id) as h from presence_new_rows order by 1) k;
        if not exists (
            select 1
            from (select user_id, min(occurred_at) as m from presence_new_rows
                  group by user_id) n
            join presence_status_tails t using (user_id)
            where t.since >= n.m
        ) then
            {_APPEND};
            return null;
        end if;
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


def upgrade() -> None:
    # the open session of each user, found by the append path's update without a scan
    op.create_index(
        "ix_presence_sessions_open",
        "presence_sessions",
        ["user_id"],
        postgresql_where="ended_at is null",
    )
    op.execute(_APPLY)
    op.execute(_TRIGGER_FUNCTION)


def downgrade() -> None:
    # 0005's own definitions, read from its file
    path = Path(__file__).with_name("0005_summaries_on_write.py")
    spec = importlib.util.spec_from_file_location("presence_migration_0005", path)
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)
    for definition in (previous._APPLY, previous._TRIGGER_FUNCTION):
        op.execute(definition.replace("create function", "create or replace function", 1))
    op.drop_index("ix_presence_sessions_open", table_name="presence_sessions")
