"""Retention (`presence prune`) on a real PostgreSQL: exactly the whole months before the
boundary go, with their exact row counts; a dry run changes nothing; uncovered,
un-rolled-up and default-partition data are refused; what is kept reads as before
(users present at the boundary are carried over); replays stay no-ops."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from sqlalchemy import text

from presence_core import analytics
from presence_core.analytics import rollups
from presence_core.analytics.common import read_frame, resolve_period
from presence_core.database import partitions, retention, tables
from presence_core.database.retention import PruneRefused
from presence_core.database.storage import Transition, write_batch


def _at(month: int, day: int, hour: int = 0) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


BATCH = [
    # only in January
    Transition("a", "online", _at(1, 10, 9), _at(1, 10, 9), user_name="Ann"),
    Transition("a", "offline", _at(1, 11, 17), _at(1, 11, 17)),
    # online since February 20, across the March boundary, away on March 5
    Transition("b", "online", _at(2, 20, 8), _at(2, 20, 8), user_name="Ben"),
    Transition("b", "away", _at(3, 5, 8), _at(3, 5, 8)),
    Transition("b", "offline", _at(3, 6, 8), _at(3, 6, 8)),
    # February, then a transition at the boundary's very instant (nothing to carry)
    Transition("c", "online", _at(2, 2, 8), _at(2, 2, 8), user_name="Cem"),
    Transition("c", "offline", _at(2, 28, 23), _at(2, 28, 23)),
    Transition("c", "online", _at(3, 1), _at(3, 1)),
    # April only
    Transition("d", "online", _at(4, 1, 9), _at(4, 1, 9), user_name="Dee"),
]

CHECKSUM = """
select count(*), md5(coalesce(string_agg(
    concat_ws('|', id, user_id, status, occurred_at, received_at, inferred, reason, source),
    ',' order by id), ''))
from presence_transitions
"""


def _checksum(engine) -> tuple:
    with engine.connect() as conn:
        return tuple(conn.execute(text(CHECKSUM)).one())


def _names(engine) -> set[str]:
    with engine.connect() as conn:
        return {p.name for p in partitions.partitions(conn)}


def _summary_counts(engine) -> dict[str, int]:
    """Rows before March in each summary table there is (the rollups)."""
    counts = {}
    with engine.connect() as conn:
        for table, column in [
            ("presence_concurrency_minutes", "minute"),
            ("presence_concurrency_quarters", "quarter"),
            ("presence_sessions", "started_at"),
            ("presence_status_days", "day"),
        ]:
            if conn.execute(text("select to_regclass(:t)"), {"t": table}).scalar():
                counts[table] = conn.execute(
                    text(f"select count(*) from {table} where {column} < :b"), {"b": _at(3, 1)}
                ).scalar()
    return counts


def _rolled_up(engine, until: datetime | None = None) -> None:
    """Every rollup valid up to ``until`` (default now), as its maintenance leaves it."""
    with engine.begin() as conn:
        conn.execute(
            text("update presence_rollup_state set valid_until = :v, dirty_from = null"),
            {"v": until or datetime.now(UTC)},
        )


def _covered(engine, start: datetime, end: datetime | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(
            tables.coverage.insert().values(listener="test", started_at=start, ended_at=end)
        )


@pytest.fixture
def history(engine):
    """January to April 2026 in their own partitions, covered by a listener and rolled up."""
    partitions.ensure_range(engine, _at(1, 1), _at(4, 30))
    write_batch(engine, BATCH)
    _covered(engine, _at(1, 1))
    _rolled_up(engine)
    return engine


def _kept_figures(engine):
    """What analytics says about March and April (kept by a prune before March)."""
    start, end = _at(3, 1), _at(5, 1)
    in_status = analytics.time_in_status(engine, start, end, include_hidden=True)
    online = analytics.online_seconds(engine, start, end, include_hidden=True)
    return (
        in_status.sort_values(list(in_status.columns)).reset_index(drop=True),
        online.sort_values(list(online.columns)).reset_index(drop=True),
    )


def test_prune_drops_exactly_the_whole_months_before_the_boundary(history):
    engine = history
    before_figures = _kept_figures(engine)
    before = _checksum(engine)
    names = _names(engine)

    planned = retention.prune(engine, date(2026, 3, 15), dry_run=True)  # mid-March: keeps March
    assert planned.boundary == _at(3, 1)
    assert [(m.month, m.partition, m.rows) for m in planned.months] == [
        (date(2026, 1, 1), "presence_transitions_2026_01", 2),
        (date(2026, 2, 1), "presence_transitions_2026_02", 3),
    ]
    assert planned.rows == 5 and planned.carried == 1  # Ben, online at March 1
    assert _checksum(engine) == before and _names(engine) == names  # the dry run changed nothing
    with engine.connect() as conn:
        assert partitions.pruned_before(conn) is None

    # the concurrency rollup over January and February, read from it before and after
    with engine.begin() as conn:  # built for real this time, up to May
        conn.execute(
            text(
                "update presence_rollup_state set valid_until = null, dirty_from = null"
                " where name = 'concurrency'"
            )
        )
    assert analytics.refresh_rollups(engine, _at(5, 1)) > 0
    pruned_curve = analytics.concurrency(engine, _at(1, 1), _at(3, 1), "day", "UTC")
    assert pruned_curve["peak"].max() == 2  # Ben and Cem in February
    summaries = _summary_counts(engine)
    # every minute from Ann's first transition (January 10, 09:00) to March 1
    assert (
        all(summaries.values()) and summaries["presence_concurrency_minutes"] == (49 * 24 + 15) * 60
    )
    assert summaries["presence_concurrency_quarters"] == (49 * 24 + 15) * 4  # and its quarters

    done = retention.prune(engine, date(2026, 3, 15))
    assert (done.months, done.carried, done.dry_run) == (planned.months, 1, False)
    assert _names(engine) == names - {
        "presence_transitions_2026_01",
        "presence_transitions_2026_02",
    }
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "select user_id, status, occurred_at, inferred, reason from presence_transitions"
                " order by occurred_at, user_id"
            )
        ).all()
        assert partitions.pruned_before(conn) == _at(3, 1)
    expected = [
        (t.user_id, t.status, t.occurred_at, False, None)
        for t in BATCH
        if t.occurred_at >= _at(3, 1)
    ] + [("b", "online", _at(3, 1), True, "pruned")]
    assert sorted(map(tuple, rows)) == sorted(expected)

    # the rollups are kept: summaries outlive the raw rows
    assert _summary_counts(engine) == summaries
    assert analytics.concurrency(engine, _at(1, 1), _at(3, 1), "day", "UTC").equals(pruned_curve)
    minutes = analytics.concurrency(engine, _at(1, 1), _at(3, 1), "day", "UTC", quarters=False)
    assert minutes.equals(pruned_curve)  # read from the quarters kept, and from the minutes

    # what was kept reads exactly as before (Ben present from March 1 to his offline)
    after_figures = _kept_figures(engine)
    for was, now in zip(before_figures, after_figures, strict=True):
        assert was.equals(now), (was, now)

    # replays stay no-ops, the pruned months' rows included (dropped, never brought back)
    kept = _checksum(engine)
    assert write_batch(engine, BATCH).inserted == 0
    # January alone: no conflict, still nothing stored, and none counted as written
    assert write_batch(engine, BATCH[:2]).inserted == 0
    assert _checksum(engine) == kept
    assert partitions.ensure_range(engine, _at(1, 1), _at(2, 1)) == []  # never made again
    assert _names(engine) == names - {
        "presence_transitions_2026_01",
        "presence_transitions_2026_02",
    }

    # the same boundary again: nothing to do; a later one prunes March too
    assert retention.prune(engine, date(2026, 3, 1)).months == []
    _rolled_up(engine)  # the carried-over row made the rollup recompute from March 1
    later = retention.prune(engine, date(2026, 4, 2))
    assert [(m.month, m.rows) for m in later.months] == [(date(2026, 3, 1), 4)]
    assert later.carried == 1  # Cem, online since March 1
    assert _checksum(engine)[0] == 2  # Dee's April row and Cem's row at April 1
    with engine.connect() as conn:
        assert partitions.pruned_before(conn) == _at(4, 1)


def test_a_dry_run_and_a_refusal_change_nothing(history):
    engine = history
    before, names = _checksum(engine), _names(engine)
    _rolled_up(engine, _at(2, 15))  # the rollups have not reached March
    with pytest.raises(PruneRefused, match=r"rollup 'concurrency' is valid only until 2026-02-15"):
        retention.prune(engine, date(2026, 3, 1))
    with pytest.raises(PruneRefused, match="rollup 'concurrency' is valid only until"):
        retention.prune(engine, date(2026, 3, 1), dry_run=True)
    assert _checksum(engine) == before and _names(engine) == names
    # January alone is rolled up: that prune is allowed
    assert [m.month for m in retention.prune(engine, date(2026, 2, 10)).months] == [
        date(2026, 1, 1)
    ]


def _concurrency_state(engine) -> tuple:
    with engine.connect() as conn:
        return tuple(
            conn.execute(
                text(
                    "select valid_until, dirty_from, (select count(*) from"
                    " presence_concurrency_minutes) from presence_rollup_state"
                    " where name = 'concurrency'"
                )
            ).one()
        )


def test_the_concurrency_rollup_is_brought_up_to_the_boundary_first(history):
    engine = history
    with engine.begin() as conn:  # never built: computed on demand
        conn.execute(
            text(
                "update presence_rollup_state set valid_until = null, dirty_from = null"
                " where name = 'concurrency'"
            )
        )
    before, state = _checksum(engine), _concurrency_state(engine)
    planned = retention.prune(
        engine, date(2026, 3, 1), dry_run=True, refresh=analytics.refresh_rollups
    )
    assert planned.refreshed == ("concurrency",) and planned.rows == 5
    assert _checksum(engine) == before and _concurrency_state(engine) == state

    # refused for another reason (a row in the default partition): nothing is refreshed
    old = datetime(2025, 11, 5, tzinfo=UTC)
    write_batch(engine, [Transition("z", "online", old, old)])
    state = _concurrency_state(engine)
    with pytest.raises(PruneRefused, match="default partition"):
        retention.prune(engine, date(2026, 3, 1), refresh=analytics.refresh_rollups)
    assert _concurrency_state(engine) == state
    with engine.begin() as conn:
        conn.execute(text("delete from presence_transitions_default"))

    # another refresher holds the rollup: it cannot be brought up to date, so no prune
    with engine.connect() as other:
        other.execute(text("select pg_advisory_lock(:k)"), {"k": rollups._ROLLUP_LOCK})
        other.commit()
        with pytest.raises(PruneRefused, match="rollup 'concurrency' is not built"):
            retention.prune(engine, date(2026, 3, 1), refresh=analytics.refresh_rollups)
        other.execute(text("select pg_advisory_unlock(:k)"), {"k": rollups._ROLLUP_LOCK})
        other.commit()
    assert _checksum(engine) == before

    done = retention.prune(engine, date(2026, 3, 1), refresh=analytics.refresh_rollups)
    assert done.refreshed == ("concurrency",) and done.rows == 5
    valid_until, _, minutes = _concurrency_state(engine)
    assert valid_until == _at(3, 1) and minutes == (49 * 24 + 15) * 60


def test_a_rollup_never_built_or_dirty_refuses(history):
    engine = history
    with engine.begin() as conn:
        conn.execute(text("update presence_rollup_state set valid_until = null"))
    with pytest.raises(PruneRefused, match="is not built"):
        retention.prune(engine, date(2026, 3, 1))
    _rolled_up(engine)
    # a late row for January 20 makes every rollup dirty from then
    write_batch(engine, [Transition("e", "online", _at(1, 20), _at(1, 20))])
    with pytest.raises(PruneRefused, match="valid only until 2026-01-20"):
        retention.prune(engine, date(2026, 3, 1))


def test_uncovered_months_are_refused(engine):
    partitions.ensure_range(engine, _at(1, 1), _at(4, 30))
    write_batch(engine, BATCH)
    _rolled_up(engine)
    before = _checksum(engine)
    with pytest.raises(PruneRefused, match="no listener ever covered any time"):
        retention.prune(engine, date(2026, 3, 1))
    _covered(engine, _at(1, 1), _at(2, 1))  # January only: coverage stops before March
    with pytest.raises(PruneRefused, match=r"does not reach 2026-03-01: up to 2026-02-01"):
        retention.prune(engine, date(2026, 3, 1))
    with engine.begin() as conn:
        conn.execute(text("delete from presence_coverage"))
    _covered(engine, _at(2, 1))  # from February on: January's rows were never covered
    with pytest.raises(PruneRefused, match="no listener covered 2026-01 "):
        retention.prune(engine, date(2026, 3, 1))
    assert _checksum(engine) == before


def test_rows_waiting_in_the_default_partition_are_refused(history):
    engine = history
    old = datetime(2025, 11, 5, tzinfo=UTC)  # a month without a partition
    write_batch(engine, [Transition("z", "online", old, old)])
    _rolled_up(engine)
    before = _checksum(engine)
    with pytest.raises(PruneRefused, match="1 rows before 2026-03-01 sit in the default partition"):
        retention.prune(engine, date(2026, 3, 1))
    assert _checksum(engine) == before


def test_a_busy_table_is_refused_instead_of_stalling_writers(history):
    engine = history
    before = _checksum(engine)
    with engine.connect() as reader:  # a long report holds the table
        reader.execute(text("select count(*) from presence_transitions"))
        with pytest.raises(PruneRefused, match="is busy"):
            retention.prune(engine, date(2026, 3, 1), lock_timeout=timedelta(seconds=0.5))
        reader.rollback()
    assert _checksum(engine) == before
    assert [m.rows for m in retention.prune(engine, date(2026, 3, 1)).months] == [2, 3]


def test_the_current_month_cannot_be_pruned(history):
    following = partitions.month_of(datetime.now(UTC) + timedelta(days=32))
    with pytest.raises(PruneRefused, match="is not over"):
        retention.prune(history, following)


def test_months_ago_keeps_the_current_month_and_n_before():
    now = datetime(2026, 12, 6, 4, tzinfo=UTC)
    assert retention.months_ago(1, now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert retention.months_ago(12, now) == datetime(2025, 12, 1, tzinfo=UTC)
    assert retention.months_ago(13, datetime(2026, 1, 31, tzinfo=UTC)) == datetime(
        2024, 12, 1, tzinfo=UTC
    )


def _presence(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "presence_core", "prune", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_says_what_it_removed_and_errors_are_one_line(history, cli_env):
    engine = history
    before = _checksum(engine)
    dry = _presence(cli_env, "--before", "2026-03-15", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "would drop 2026-01: 2 transitions",
        "would drop 2026-02: 3 transitions",
        "would drop 2 months before 2026-03-01 (UTC), 5 transitions; 1 user present at "
        "2026-03-01 would be carried over; rollups kept; nothing changed (--dry-run)",
    ]
    assert _checksum(engine) == before

    for args, message in [
        (("--before", "March"), "presence: error: --before 'March' is not a date (YYYY-MM-DD)"),
        ((), "presence: error: give --before DATE, or set PRESENCE_RETENTION_MONTHS"),
    ]:
        bad = _presence(cli_env, *args)
        assert bad.returncode != 0 and bad.stderr.strip() == message, bad.stderr
    old = datetime(2025, 11, 5, tzinfo=UTC)  # a row of a month without a partition
    write_batch(engine, [Transition("z", "online", old, old)])
    _rolled_up(engine)
    waiting = _checksum(engine)
    refused = _presence(cli_env, "--before", "2026-03-15")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "presence: error: refusing to prune before 2026-03-01: 1 rows before 2026-03-01 sit "
        "in the default partition (their month has no partition)"
    ]
    assert _checksum(engine) == waiting
    with engine.begin() as conn:
        conn.execute(text("delete from presence_transitions_default"))

    _rolled_up(engine)
    done = _presence(cli_env, "--before", "2026-03-15")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("dropped 2 months before 2026-03-01 (UTC)")
    again = _presence(cli_env, "--before", "2026-03-15")
    assert again.stdout.strip() == "nothing to prune: months before 2026-03-01 already were"

    # configured retention, when --before is not given
    _rolled_up(engine)  # the carried-over rows made the rollup recompute from March 1
    months = 3
    boundary = retention.months_ago(months)
    configured = _presence({**cli_env, "PRESENCE_RETENTION_MONTHS": str(months)}, "--dry-run")
    assert configured.returncode == 0, configured.stderr
    assert f"before {boundary:%Y-%m-%d} (UTC)" in configured.stdout


def test_the_daily_active_cache_never_holds_a_prune_back_and_keeps_its_days(history):
    """The cache of daily active users (migration 0009) is computed from the summaries,
    not the raw log: dirty or not, it does not refuse a prune, and the days it keeps
    (like the summaries) read as before."""
    engine = history
    before = analytics.daily_active_users(engine, date(2026, 1, 1), date(2026, 4, 30), "UTC")
    assert before["active_users"].sum() > 0
    with engine.begin() as conn:
        assert conn.execute(text("select count(*) from presence_daily_active")).scalar() > 100
        conn.execute(
            text("update presence_rollup_state set dirty_from = :d where name = 'daily_active'"),
            {"d": _at(1, 5)},
        )
    report = retention.prune(engine, date(2026, 3, 15))
    assert report.rows == 5
    after = analytics.daily_active_users(engine, date(2026, 1, 1), date(2026, 4, 30), "UTC")
    assert after.equals(before)


def test_the_user_days_cache_keeps_its_days_and_reads_as_before(history):
    """The per-user day cache (migration 0011) answers to the same mark as the daily
    active users: it never holds a prune back, keeps the pruned months' days (like the
    summaries it is computed from), and the carried-over rows at the boundary replace
    only the days from there on: time in status and the daily summary of the whole
    history read exactly as before, cached or not."""
    engine = history
    period = (date(2026, 1, 1), date(2026, 4, 30), "UTC")
    before = analytics.time_in_status(engine, *period, include_hidden=True)
    daily = analytics.daily_summary(engine, *period, include_hidden=True)
    with engine.connect() as conn:
        days = conn.execute(text("select count(*) from presence_user_days_cover")).scalar()
    assert days > 100 and not daily.empty
    report = retention.prune(engine, date(2026, 3, 15))
    assert report.rows == 5
    with engine.connect() as conn:  # the months before the boundary are still cached
        assert conn.execute(
            text("select count(*) from presence_user_days where day < '2026-03-01'")
        ).scalar()
    after = analytics.time_in_status(engine, *period, include_hidden=True)
    pd.testing.assert_frame_equal(after, before)
    pd.testing.assert_frame_equal(
        analytics.daily_summary(engine, *period, include_hidden=True), daily
    )
    # and the same as the summaries computed without the cache (the raw log differs
    # by design: for it, a session running across the boundary starts there)
    lo, hi = resolve_period(date(2026, 1, 1), date(2026, 4, 30), ZoneInfo("UTC"))
    computed = read_frame(
        engine,
        analytics.daily_summary_sql(),
        analytics.daily_params(lo, hi, ZoneInfo("UTC"), include_hidden=True),
        utc=("first_online", "last_offline"),
    )
    pd.testing.assert_frame_equal(computed, daily)


def test_the_flapping_days_never_hold_a_prune_back_and_read_the_log_left(history):
    """The flapping users' kept days (migration 0013) answer to the same mark and are
    only a filter before the raw log is read: they do not refuse a prune, and after
    it flapping users read exactly what the log left (a burst in a pruned month is
    gone with its rows, one after the boundary is still reported)."""
    from tests.test_analytics_flapping import burst, found, reference

    engine = history
    write_batch(engine, burst("e", _at(2, 10, 12)) + burst("f", _at(4, 2, 12)))
    _rolled_up(engine)
    period = (_at(1, 1), _at(4, 30))
    assert analytics.flapping_users(engine, *period)["user_id"].tolist() == ["e", "f"]
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from presence_flapping_days")).scalar() > 100
    retention.prune(engine, date(2026, 3, 15))
    with engine.connect() as conn:  # the pruned months' days are still kept
        kept = conn.execute(
            text("select user_ids from presence_flapping_days where day = '2026-02-10'")
        ).scalar()
    assert kept == ["e"]
    after = found(analytics.flapping_users(engine, *period))
    assert after == reference(engine, *period, 6, timedelta(minutes=10))
    assert [r[0] for r in after] == ["f"]
