"""Retention: dropping whole months of raw transitions, and refusing to by accident.

``presence_transitions`` is partitioned by UTC month
(:mod:`presence_core.database.partitions`), so retention drops partitions
instead of deleting rows: instant, and no bloat left behind. Only whole months
strictly before the boundary go; the boundary is the first day (UTC) of the
month holding the date asked for, so a date in mid-March keeps March and prunes
February and before.

What is kept: every rollup (``presence_concurrency_minutes`` and its quarter-hours
``presence_concurrency_quarters``, refreshed together, and the other summaries, and
the daily active users and each user's daily figures cached from them,
``presence_daily_active`` and ``presence_user_days``) keeps its rows for the pruned
months, since summaries are meant to outlive the raw log; so do the flapping users'
kept days (``presence_flapping_days``, 0013), harmlessly: they only choose whose raw
rows flapping reads, and the pruned months' rows are gone;
``presence_users``, ``presence_coverage`` and the listeners' heartbeats are
untouched.

So that what is kept reads exactly as before, a user who was present at the
boundary (their last transition before it was not ``offline``) gets one
``inferred`` row at the boundary carrying that status (reason ``pruned``):
without it, analytics would see such a user absent from the boundary to their
next transition. A session running across the boundary then starts, as far as
the raw log knows, at the boundary.

Refused, with nothing changed (:class:`PruneRefused`):
- a boundary in the current month or later (the month is not over);
- rows for months before the boundary waiting in the default partition (rows
  whose month never had a partition: look at them before they go);
- months not covered: rows in a month no listener (nor the history generator)
  covered in ``presence_coverage``, or coverage that does not reach the boundary
  (a listener that has not yet delivered what it spooled);
- months not yet rolled up: the boundary is past some rollup's ``valid_until``
  (or that rollup was never built, or is dirty from before the boundary) in
  ``presence_rollup_state``. The rollups computed on demand
  (:data:`REFRESHED_ON_DEMAND`) are first brought up to the boundary when the
  caller passes their ``refresh`` (``presence prune`` does), once every other
  check has passed; refused only if that refresh cannot run.

Dropping a month waits at most :data:`LOCK_TIMEOUT` for queries holding the
table (writers would queue behind it), then gives up with nothing changed.

Afterwards one partition, ``presence_transitions_pruned``, covers everything
before the boundary and ignores what is written to it, so a replay of pruned
events stays a no-op (see :mod:`partitions`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

from psycopg.errors import LockNotAvailable
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from presence_core.database import partitions
from presence_core.errors import PresenceError

__all__ = ["PruneRefused", "PrunedMonth", "PruneReport", "boundary_of", "prune"]

REASON = "pruned"
SOURCE = "prune"


class PruneRefused(PresenceError):
    """Pruning was refused; nothing was changed."""


@dataclass(frozen=True)
class PrunedMonth:
    """One month of transitions removed (or that would be): its partition and exact row count."""

    month: date
    partition: str
    rows: int


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` removed (or, for a dry run, would remove)."""

    boundary: datetime
    months: list[PrunedMonth] = field(default_factory=list)
    carried: int = 0  # users present at the boundary, given a row there
    dry_run: bool = False
    already_before: datetime | None = None  # the boundary of an earlier prune
    refreshed: tuple[str, ...] = ()  # rollups brought up to the boundary first (or to be)

    @property
    def rows(self) -> int:
        return sum(month.rows for month in self.months)


def boundary_of(before: date | datetime) -> datetime:
    """The retention boundary for ``--before DATE``: the first instant (UTC) of the
    month holding ``before``; only whole months before it are pruned."""
    month = partitions.month_of(before)
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def months_ago(months: int, now: datetime | None = None) -> datetime:
    """The boundary that keeps the current month and the ``months`` before it."""
    if months < 1:
        raise ValueError("months must be at least 1")
    current = partitions.month_of(now or datetime.now(UTC))
    index = current.year * 12 + current.month - 1 - months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


_FUNCTION = """
create or replace function presence_pruned_ignore() returns trigger
language plpgsql as $$
begin
    return null;  -- the month was pruned: a replayed row is dropped, as a duplicate would be
end
$$
"""

# Per user (index scans, not a sort of every pruned row): the status in force at
# :boundary, for users present then with no transition at that very instant.
_CARRY = """
select u.user_id, last.status
from presence_users u
cross join lateral (
    select t.status from presence_transitions t
    where t.user_id = u.user_id and t.occurred_at < :boundary
    order by t.occurred_at desc, t.id desc limit 1
) last
where last.status <> 'offline'
  and not exists (
    select 1 from presence_transitions t
    where t.user_id = u.user_id and t.occurred_at = :boundary
  )
"""


def _rollup_problems(
    conn: Connection, boundary: datetime, refreshable: tuple[str, ...] = ()
) -> tuple[list[str], tuple[str, ...]]:
    """Why the rollups do not cover the months before ``boundary``, and which of the
    behind ones are in ``refreshable`` (a dry run's "would be brought up to date")."""
    rows = conn.execute(
        text("select name, valid_until, dirty_from from presence_rollup_state order by name")
    ).all()
    problems, behind = [], []
    for name, valid_until, dirty_from in rows:
        if name in CACHES:
            continue
        valid = valid_until
        if valid is not None and dirty_from is not None:
            valid = min(valid, dirty_from)
        if valid is not None and valid >= boundary:
            continue
        if name in refreshable:
            behind.append(name)
        elif valid is None:
            problems.append(f"rollup {name!r} is not built")
        else:
            until = f"{valid.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
            problems.append(f"rollup {name!r} is valid only until {until}")
    return problems, tuple(behind)


def _coverage_problems(conn: Connection, boundary: datetime, months: list[PrunedMonth]) -> str:
    reach = conn.execute(
        text("select max(coalesce(ended_at, now())) from presence_coverage")
    ).scalar()
    if reach is None or reach < boundary:
        seen = "no listener ever covered any time" if reach is None else f"up to {reach:%Y-%m-%d}"
        return f"coverage (presence_coverage) does not reach {boundary:%Y-%m-%d}: {seen}"
    uncovered = []
    for month in months:
        if month.rows == 0:
            continue
        start, end = partitions._bounds(month.month)
        covered = conn.execute(
            text(
                "select exists (select 1 from presence_coverage "
                "where started_at < :end and coalesce(ended_at, now()) > :start)"
            ),
            {"start": start, "end": end},
        ).scalar()
        if not covered:
            uncovered.append(f"{month.month:%Y-%m}")
    if uncovered:
        return f"no listener covered {', '.join(uncovered)} (presence_coverage), which hold rows"
    return ""


LOCK_TIMEOUT = timedelta(seconds=10)
"""How long dropping a month may wait for queries that hold the table; while it
waits, writers queue behind it, so it gives up (nothing changed) rather than stall them."""


Refresher = Callable[[Engine, datetime], object]

CACHES = ("daily_active",)
"""State rows of caches computed on read from the summaries (migration 0009; the per-user
days of 0011 answer to the same row), not from the raw log: pruning loses them nothing
(they keep their days, like the summaries), so they never hold a prune back. The
flapping users' days of 0013 answer to it too; they are computed from the raw log but
only filter what flapping reads of it, so what they keep of pruned months is harmless."""

REFRESHED_ON_DEMAND = ("concurrency",)
"""Rollups computed on demand rather than kept on write: ``refresh`` brings them up to
the boundary before anything is dropped (the others must already be valid)."""


def prune(
    engine: Engine,
    before: date | datetime,
    *,
    dry_run: bool = False,
    lock_timeout: timedelta = LOCK_TIMEOUT,
    refresh: Refresher | None = None,
) -> PruneReport:
    """Drop every monthly partition of transitions wholly before ``before``'s month.

    Returns what was removed (exact row counts); with ``dry_run`` the same report
    and nothing changed. Raises :class:`PruneRefused` (nothing changed) for the
    cases in this module's description. One transaction: a failure leaves
    everything as it was. ``refresh(engine, boundary)`` (the concurrency rollup's
    ``presence_core.analytics.refresh_rollups``), when given, first brings the
    rollups of :data:`REFRESHED_ON_DEMAND` up to the boundary (a dry run only says
    it would); if it cannot (another refresher holds them), the prune is refused.
    """
    boundary = boundary_of(before)
    current = boundary_of(datetime.now(UTC))
    if boundary > current:
        raise PruneRefused(
            f"{boundary:%Y-%m} is not over: only months before the current one "
            f"({current:%Y-%m}) can be pruned"
        )
    refreshed: tuple[str, ...] = ()
    if refresh is not None and not dry_run:
        # the same checks first, so that a prune refused for another reason writes nothing
        plan = prune(engine, boundary, dry_run=True, lock_timeout=lock_timeout, refresh=refresh)
        if plan.refreshed:
            refresh(engine, boundary)
            refreshed = plan.refreshed
    refreshable = REFRESHED_ON_DEMAND if refresh is not None and dry_run else ()
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            conn.execute(
                text("select set_config('lock_timeout', :ms, true)"),
                {"ms": f"{int(lock_timeout.total_seconds() * 1000)}ms"},
            )
            report = _prune(conn, boundary, dry_run, refreshable)
            if refreshed and report.months:
                report = replace(report, refreshed=refreshed)
        except OperationalError as exc:
            transaction.rollback()
            if isinstance(exc.orig, LockNotAvailable):
                raise PruneRefused(
                    "presence_transitions is busy (a long query or another prune holds it "
                    f"for over {lock_timeout.total_seconds():g} s); nothing changed: try again"
                ) from None
            raise
        except BaseException:
            transaction.rollback()
            raise
        if dry_run:
            transaction.rollback()
        else:
            transaction.commit()
        return report


def _prune(
    conn: Connection, boundary: datetime, dry_run: bool, refreshable: tuple[str, ...]
) -> PruneReport:
    if not partitions.is_partitioned(conn):
        raise PruneRefused("presence_transitions is not partitioned: run `presence migrate`")
    # one partition manager at a time (the same lock as creating partitions)
    conn.execute(text(partitions._LOCK))
    earlier = partitions.pruned_before(conn)
    if earlier is not None and boundary <= earlier:
        return PruneReport(boundary, dry_run=dry_run, already_before=earlier)
    months = [
        PrunedMonth(
            month=part.start.date(),
            partition=part.name,
            # the names come from the catalogue, never from a caller
            rows=int(conn.execute(text(f"select count(*) from {part.name}")).scalar()),
        )
        for part in partitions.partitions(conn)
        if part.end <= boundary
    ]
    waiting = conn.execute(
        text(f"select count(*) from {partitions.DEFAULT_PARTITION} where occurred_at < :boundary"),
        {"boundary": boundary},
    ).scalar()
    problems: list[str] = []
    behind: tuple[str, ...] = ()
    if waiting:
        problems.append(
            f"{waiting:,} rows before {boundary:%Y-%m-%d} sit in the default partition "
            "(their month has no partition)"
        )
    if any(month.rows for month in months):
        coverage = _coverage_problems(conn, boundary, months)
        if coverage:
            problems.append(coverage)
        rollups, behind = _rollup_problems(conn, boundary, refreshable)
        problems.extend(rollups)
    if problems:
        raise PruneRefused(f"refusing to prune before {boundary:%Y-%m-%d}: " + "; ".join(problems))
    if not months:
        return PruneReport(boundary, dry_run=dry_run, already_before=earlier)
    carry = conn.execute(text(_CARRY), {"boundary": boundary}).all()
    report = PruneReport(boundary, months, carried=len(carry), dry_run=dry_run)
    if dry_run:
        return replace(report, refreshed=behind)
    if carry:
        partitions.ensure_months(conn, [boundary])
        conn.execute(
            text(
                "insert into presence_transitions "
                "(user_id, status, occurred_at, received_at, inferred, reason, source) "
                "values (:user_id, :status, :at, now(), true, :reason, :source) "
                "on conflict do nothing"
            ),
            [
                {
                    "user_id": user,
                    "status": status,
                    "at": boundary,
                    "reason": REASON,
                    "source": SOURCE,
                }
                for user, status in carry
            ],
        )
    for month in months:
        conn.execute(text(f"drop table {month.partition}"))
    _move_pruned_partition(conn, boundary)
    return report


def _move_pruned_partition(conn: Connection, boundary: datetime) -> None:
    """(Re)create the partition that ignores rows before ``boundary``."""
    parent, name = partitions.PARENT, partitions.PRUNED_PARTITION
    conn.execute(text(f"drop table if exists {name}"))
    conn.execute(text(_FUNCTION))
    conn.execute(
        text(
            f"create table {name} partition of {parent} "
            f"for values from (minvalue) to ('{boundary.isoformat()}')"
        )
    )
    conn.execute(
        text(
            f"create trigger presence_pruned_ignore before insert on {name} "
            "for each row execute function presence_pruned_ignore()"
        )
    )
    conn.execute(text(f"comment on table {name} is '{boundary.isoformat()}'"))
