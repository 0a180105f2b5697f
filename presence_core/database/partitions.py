"""Monthly partitions of ``presence_transitions``, on ``occurred_at`` (UTC months).

A year of history is about 35 M rows for 5,000 people; one partition a month
keeps each month's scan and index to a month, and lets retention drop whole
months instead of deleting rows. The unique key ``(user_id, occurred_at,
status)`` includes the partition key, so it still makes every replay a no-op.

Partitions are created ahead (:func:`ensure_ahead`, run by every command that
connects) and for any period a writer announces (:func:`ensure_range`). A row
for a month that has no partition yet is never lost: it lands in the default
partition, and creating that month's partition later moves such rows into it.

Months dropped by retention (:mod:`presence_core.database.retention`) are
covered by one partition, :data:`PRUNED_PARTITION`, from the beginning of time
to the retention boundary (:func:`pruned_before`), which silently ignores every
row written to it: a replay of pruned events stays a no-op instead of bringing
back a few rows of a month whose others are gone. No month before the boundary
gets a partition again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import Connection, Engine, text

__all__ = [
    "DEFAULT_PARTITION",
    "PARENT",
    "PRUNED_PARTITION",
    "Partition",
    "ensure_ahead",
    "ensure_months",
    "ensure_range",
    "month_of",
    "months_between",
    "partition_name",
    "partitions",
    "pruned_before",
]

PARENT = "presence_transitions"
DEFAULT_PARTITION = "presence_transitions_default"
PRUNED_PARTITION = "presence_transitions_pruned"
MONTHS_AHEAD = 3
_LOCK = "select pg_advisory_xact_lock(hashtext('presence-partitions'))"


@dataclass(frozen=True)
class Partition:
    """One month's partition (``start`` inclusive, ``end`` exclusive, UTC)."""

    name: str
    start: datetime
    end: datetime
    rows: int  # the planner's estimate: exact counts of a year would cost a full scan


def month_of(moment: datetime | date) -> date:
    """The first day of the UTC month holding ``moment``."""
    if isinstance(moment, datetime):
        moment = moment.astimezone(UTC).date()
    return moment.replace(day=1)


def _next(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def months_between(start: datetime | date, end: datetime | date) -> list[date]:
    """Every UTC month from the one holding ``start`` to the one holding ``end``."""
    month, last = month_of(start), month_of(end)
    months = []
    while month <= last:
        months.append(month)
        month = _next(month)
    return months


def partition_name(month: date) -> str:
    return f"{PARENT}_{month:%Y_%m}"


def _bounds(month: date) -> tuple[datetime, datetime]:
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    following = _next(month)
    return start, datetime(following.year, following.month, 1, tzinfo=UTC)


def _existing(conn: Connection) -> set[str]:
    rows = conn.execute(
        text(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
            "where i.inhparent = to_regclass(:parent)"
        ),
        {"parent": PARENT},
    )
    return {row[0] for row in rows}


def is_partitioned(conn: Connection) -> bool:
    """Whether ``presence_transitions`` is partitioned (schema 0004 or later)."""
    kind = conn.execute(
        text("select relkind from pg_class where oid = to_regclass(:parent)"), {"parent": PARENT}
    ).scalar()
    return kind == "p"


def pruned_before(conn: Connection) -> datetime | None:
    """The retention boundary: months before it were pruned (None: nothing ever was)."""
    kept = conn.execute(
        text("select obj_description(to_regclass(:name), 'pg_class')"),
        {"name": PRUNED_PARTITION},
    ).scalar()
    return datetime.fromisoformat(kept) if kept else None


def ensure_months(conn: Connection, months: Iterable[date]) -> list[str]:
    """Create the partitions of ``months`` that are missing; return their names.

    Rows already waiting in the default partition for such a month move into
    the new partition in the same transaction (PostgreSQL would refuse to add
    a partition whose range the default partition still holds rows of). Months
    before the retention boundary (:func:`pruned_before`) are skipped: they
    were pruned, and their rows are ignored.
    """
    wanted = sorted({month_of(m) for m in months})
    if not wanted or not is_partitioned(conn):
        return []
    boundary = pruned_before(conn)
    if boundary is not None:
        wanted = [m for m in wanted if m >= boundary.date()]
        if not wanted:
            return []
    existing = _existing(conn)
    missing = [m for m in wanted if partition_name(m) not in existing]
    if not missing:
        return []
    conn.execute(text(_LOCK))
    existing = _existing(conn)  # another process may have made them while we waited
    created = []
    for month in missing:
        name = partition_name(month)
        if name in existing:
            continue
        start, end = _bounds(month)
        params = {"start": start, "end": end}
        waiting = conn.execute(
            text(
                f"select exists (select 1 from {DEFAULT_PARTITION} "
                "where occurred_at >= :start and occurred_at < :end)"
            ),
            params,
        ).scalar()
        bounds = f"from ('{start.isoformat()}') to ('{end.isoformat()}')"
        if not waiting:
            conn.execute(text(f"create table {name} partition of {PARENT} for values {bounds}"))
        else:
            # detach-free move: a plain table, filled from the default partition, then attached
            conn.execute(text(f"create table {name} (like {PARENT} including defaults)"))
            conn.execute(
                text(
                    f"with moved as (delete from {DEFAULT_PARTITION} "
                    "where occurred_at >= :start and occurred_at < :end returning *) "
                    f"insert into {name} select * from moved"
                ),
                params,
            )
            conn.execute(text(f"alter table {PARENT} attach partition {name} for values {bounds}"))
        created.append(name)
    return created


def ensure_range(engine: Engine | Connection, start: datetime, end: datetime) -> list[str]:
    """Make sure every month from ``start`` to ``end`` has its partition."""
    months = months_between(start, end)
    if isinstance(engine, Connection):
        return ensure_months(engine, months)
    with engine.begin() as conn:
        return ensure_months(conn, months)


def ensure_ahead(engine: Engine | Connection, now: datetime | None = None) -> list[str]:
    """Partitions for this month and the next :data:`MONTHS_AHEAD`."""
    now = now or datetime.now(UTC)
    last = month_of(now)
    for _ in range(MONTHS_AHEAD):
        last = _next(last)
    return ensure_range(engine, now, datetime(last.year, last.month, 1, tzinfo=UTC))


def partitions(conn: Connection) -> list[Partition]:
    """The monthly partitions, oldest first, with estimated row counts (neither the
    default partition nor the pruned one)."""
    rows = conn.execute(
        text(
            "select c.relname, pg_get_expr(c.relpartbound, c.oid), greatest(c.reltuples, 0) "
            "from pg_inherits i join pg_class c on c.oid = i.inhrelid "
            "where i.inhparent = to_regclass(:parent) and c.relname <> all(:special) "
            "order by c.relname"
        ),
        {"parent": PARENT, "special": [DEFAULT_PARTITION, PRUNED_PARTITION]},
    )
    found = []
    for name, _bound, estimate in rows:
        year, month = (int(part) for part in name.rsplit("_", 2)[-2:])
        start, end = _bounds(date(year, month, 1))
        found.append(Partition(name=name, start=start, end=end, rows=int(estimate)))
    return found
