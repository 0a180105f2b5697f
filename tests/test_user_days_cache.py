"""The per-user cache of whole past local days (migration 0011) stays exact: time in
status and the daily summary read through it equal the summaries' computed rows, the
raw-log definition and the second-by-second brute force, after late, out-of-order and
replayed batches, deletes and updates, in zones on whole, half and quarter hours around
their DST changes; filters (teams, hidden users) apply on read; and the cache is what
answers (a stored row is served as stored until a write before that day's end)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from presence_core import analytics
from presence_core.analytics import day_cache, summaries, user_days
from presence_core.analytics.common import bind, read_frame, resolve_period
from presence_core.analytics.daily import daily_params
from presence_core.database.storage import Transition, write_batch
from tests import test_rollups_reads as reads

ZONES = ("America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe")


def cover(engine, zone: str) -> set[date]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                text("select day from presence_user_days_cover where tz = :tz"), {"tz": zone}
            ).scalars()
        )


AVAIL = ("online", "busy", "online")  # a status named twice counts once


def computed(engine, lo, hi, zone) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The summaries' statements with no cache (what the cache stores): time in status
    and the daily summary."""
    lo, hi = resolve_period(lo, hi, ZoneInfo(zone))
    params = bind(lo, hi, ZoneInfo(zone), include_hidden=False, statuses=None)
    tis = read_frame(engine, summaries.time_in_status_sql(), params)
    params = daily_params(lo, hi, ZoneInfo(zone), available_statuses=AVAIL)
    daily = read_frame(
        engine, analytics.daily_summary_sql(), params, utc=("first_online", "last_offline")
    )
    return tis, daily


def agree(engine, zone: str, periods) -> None:
    """Cached (rollup) == the summaries computed (exactly, floats included) == the raw
    log, for each period."""
    for lo, hi in periods:
        tis, daily = computed(engine, lo, hi, zone)
        got = analytics.time_in_status(engine, lo, hi, zone)
        pd.testing.assert_frame_equal(got, tis, check_exact=True)
        pd.testing.assert_frame_equal(
            got, analytics.time_in_status(engine, lo, hi, zone, rollup=False), check_dtype=False
        )
        got = analytics.daily_summary(engine, lo, hi, zone, available_statuses=AVAIL)
        pd.testing.assert_frame_equal(got, daily, check_exact=True)
        want = analytics.daily_summary(engine, lo, hi, zone, available_statuses=AVAIL, rollup=False)
        pd.testing.assert_frame_equal(got, want, check_dtype=False)


# lean: each example reads through the cache, the summaries and the raw log after
# every batch (the most costly test file of the suite is the daily active users')
@settings(reads.database_property, max_examples=4)
@given(
    plan=reads.batches,
    late=st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 2), st.integers(0, reads.SPAN), st.sampled_from(reads.STATUSES)
            ),
            min_size=1,
            max_size=10,
        ),
        min_size=1,
        max_size=2,
    ),
)
@pytest.mark.parametrize("zone", ZONES)
def test_cached_days_stay_exact_after_late_writes(engine, zone, plan, late):
    reads.write(engine, zone, plan, 0)  # truncates first: every cached day goes
    with engine.begin() as conn:  # hidden users are cached too, and left out on read
        conn.execute(text("update presence_users set hide_last_seen = true where user_id = 'u2'"))
    tz, t0 = ZoneInfo(zone), reads.origin(zone)
    first = t0.astimezone(tz).date() - timedelta(days=1)
    start = datetime.combine(first, datetime.min.time(), tzinfo=tz)
    periods = [
        (first, first + timedelta(days=4)),
        (start + timedelta(hours=1), start + timedelta(days=4, hours=2)),
    ]
    agree(engine, zone, periods)
    assert len(cover(engine, zone)) >= 4  # the whole past days were kept
    reads.overtake(engine, t0, late, len(late), lambda: agree(engine, zone, periods))
    hi = datetime.combine(first + timedelta(days=5), datetime.min.time(), tzinfo=tz)
    with engine.connect() as conn:
        hidden = set(
            conn.execute(text("select user_id from presence_users where hide_last_seen")).scalars()
        )
    users = {u: r for u, r in reads.stored_rows(engine).items() if u not in hidden}
    seconds, _ = reads.brute_force(users, tz, int(start.timestamp()), int(hi.timestamp()))
    got = analytics.time_in_status(engine, first, first + timedelta(days=4), zone)
    assert {(r.date, r.user_id, r.status): r.seconds for r in got.itertuples()} == seconds


def test_the_cache_is_read_and_a_write_before_a_day_ends_replaces_it(engine):
    """Stored rows are served as stored (the cache answers, for a team too); a write
    before a day's end replaces that day and the later ones, not the earlier ones."""
    zone = "Asia/Kathmandu"
    tz = ZoneInfo(zone)
    day0 = datetime(2026, 6, 1, tzinfo=tz)
    rows = [
        Transition(f"u{k}", "online", day0 + timedelta(hours=6 + 24 * k), day0) for k in range(3)
    ]
    write_batch(engine, rows)
    first, last = day0.date(), day0.date() + timedelta(days=4)
    before = analytics.time_in_status(engine, first, last, zone)
    assert len(cover(engine, zone)) == 4  # (the day ending at the period's end is computed)
    with engine.begin() as conn:
        conn.execute(text("update presence_user_days set status_us = '{7000000}'"))
        conn.execute(text("update presence_users set team = 'red'"))
    got = analytics.time_in_status(engine, first, last, zone, team="red")
    assert len(got) == len(before)
    assert list(got["seconds"] == 7.0) == list(got["date"] < last)  # the cache answers
    late = day0 + timedelta(days=2, hours=23)  # before the third day's end
    write_batch(engine, [Transition("u0", "offline", late, late)])
    got = analytics.time_in_status(engine, first, last, zone, team="red")
    want = analytics.time_in_status(engine, first, last, zone, team="red", rollup=False)
    assert list(got["seconds"] == 7.0) == list(want["date"] < first + timedelta(days=2))
    changed = got["date"] >= first + timedelta(days=2)
    pd.testing.assert_frame_equal(
        got[changed].reset_index(drop=True),
        want[changed].reset_index(drop=True),
        check_dtype=False,
    )


def test_filters_apply_on_read_and_team_moves_need_no_write(engine):
    """Every user's days are cached at once, whatever the first read's filter; a user
    moved to another team (no transition written) reads right at once."""
    t = datetime(2026, 5, 4, 8, tzinfo=UTC)
    for k, team in enumerate(("red", "red", "blue")):
        write_batch(engine, [Transition(f"u{k}", "online", t + timedelta(hours=k), t)])
        with engine.begin() as conn:
            conn.execute(
                text("update presence_users set team = :team where user_id = :u"),
                {"team": team, "u": f"u{k}"},
            )
    first, last = t.date(), t.date() + timedelta(days=3)

    def check(team: str) -> pd.DataFrame:
        got = analytics.daily_summary(engine, first, last, "UTC", team=team)
        pd.testing.assert_frame_equal(
            got,
            analytics.daily_summary(engine, first, last, "UTC", team=team, rollup=False),
            check_dtype=False,
        )
        return got

    assert set(check("red")["user_id"]) == {"u0", "u1"}
    assert len(cover(engine, "UTC")) == 3  # all users' days, from a team's read
    with engine.begin() as conn:
        conn.execute(text("update presence_users set team = 'blue' where user_id = 'u1'"))
    assert set(check("blue")["user_id"]) == {"u1", "u2"}


def test_a_session_closing_at_the_periods_end_is_open_there_only(engine):
    """``last_offline`` of a day ending exactly at the period's end is empty (the
    session counts as open then), and set in any longer period: the cached value is
    the longer periods', the period's last day is computed."""
    t = datetime(2026, 5, 4, 8, tzinfo=UTC)
    midnight = datetime(2026, 5, 5, tzinfo=UTC)
    write_batch(
        engine,
        [Transition("a", "online", t, t), Transition("a", "offline", midnight, midnight)],
    )
    # the second read caches May 2-3 and computes May 4 (ending at its end); the third
    # fills May 4 alone (May 5 was cached by the first), a stretch ending at the close
    for first, end in ((5, 6), (2, 4), (2, 6)):
        period = (date(2026, 5, first), date(2026, 5, end), "UTC")
        got = analytics.daily_summary(engine, *period)
        pd.testing.assert_frame_equal(
            got, analytics.daily_summary(engine, *period, rollup=False), check_dtype=False
        )
        may4 = got[got["date"] == date(2026, 5, 4)]
        if first == 2:
            assert may4["last_offline"].isna().all() == (end == 4)


def test_the_statement_computes_all_if_its_cached_days_went_stale(engine):
    """A statement built while days were cached, run after a late write and another
    read invalidated them, computes the whole period (the export streams it later)."""
    t = datetime(2026, 5, 4, 10, tzinfo=UTC)
    write_batch(engine, [Transition("a", "online", t, t)])
    lo, hi = datetime(2026, 5, 3, tzinfo=UTC), datetime(2026, 5, 8, 12, tzinfo=UTC)
    params = daily_params(lo, hi, ZoneInfo("UTC"))
    sql, bound = analytics.daily.daily_summary_query(engine, params)
    assert bound["n_cached"] == 5
    late = datetime(2026, 5, 5, 12, tzinfo=UTC)
    write_batch(engine, [Transition("a", "offline", late, late)])
    analytics.daily_active_users(engine, lo, hi, "UTC")  # clears the mark
    with engine.connect() as conn:
        assert conn.execute(text(day_cache.STATE)).scalar() is None
    got = read_frame(engine, sql, bound, utc=("first_online", "last_offline"))
    want = analytics.daily_summary(engine, lo, hi, "UTC", rollup=False)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert len(got) == 2


def test_a_read_whose_cached_days_went_stale_computes_the_period_again(engine):
    """The readers' statements end in a sentinel instead of the whole-period branch:
    run after a late write and another read invalidated their cached days, they
    return it, and read_cached computes the period (time in status, daily summary)."""
    t = datetime(2026, 5, 4, 10, tzinfo=UTC)
    write_batch(engine, [Transition("a", "online", t, t), Transition("b", "busy", t, t)])
    lo, hi = datetime(2026, 5, 3, tzinfo=UTC), datetime(2026, 5, 8, 12, tzinfo=UTC)
    params = daily_params(lo, hi, ZoneInfo("UTC"))
    daily = analytics.daily.daily_summary_query(engine, params, sentinel=True)
    tis_params = bind(lo, hi, ZoneInfo("UTC"), include_hidden=False, statuses=None)
    tis_sql = summaries.time_in_status_sql()
    tis = user_days.cached_query(
        engine,
        tis_sql,
        user_days.time_in_status_cached_sql(),
        "date, user_id, status",
        tis_params,
        lo,
        hi,
        ZoneInfo("UTC"),
        sentinel="null::date, null, null, null",
    )
    assert daily[1]["n_cached"] == tis[1]["n_cached"] == 5
    late = datetime(2026, 5, 5, 12, tzinfo=UTC)
    write_batch(engine, [Transition("a", "offline", late, late)])
    analytics.daily_active_users(engine, lo, hi, "UTC")  # clears the mark
    utc = ("first_online", "last_offline")
    got = user_days.read_cached(engine, daily, analytics.daily_summary_sql(), params, utc)
    want = analytics.daily_summary(engine, lo, hi, "UTC", rollup=False)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert len(got) == 2 + 5  # a: May 4 and 5; b: May 4 to 8
    got = user_days.read_cached(engine, tis, tis_sql, tis_params)
    want = analytics.time_in_status(engine, lo, hi, "UTC", rollup=False)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert len(got) == 2 + 5  # a: May 4 and 5; b: May 4 to 8


def test_days_a_write_changed_during_a_fill_are_not_kept(engine, monkeypatch):
    """A write committed while a fill runs (before its check of the mark) keeps the
    days ending after what it touched out of the cache."""
    t = datetime(2026, 5, 4, 10, tzinfo=UTC)
    write_batch(engine, [Transition("a", "online", t, t)])
    lo, hi = datetime(2026, 5, 3, tzinfo=UTC), datetime(2026, 5, 9, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(text("update presence_rollup_state set dirty_from = null"))
    real = user_days.fill_sql

    def fill_then_write():  # the write lands after the fill began, before its check
        late = datetime(2026, 5, 5, 12, tzinfo=UTC)
        write_batch(engine, [Transition("b", "online", late, late)])
        return real()

    monkeypatch.setattr(user_days, "fill_sql", fill_then_write)
    with engine.connect() as conn:
        user_days.fill(conn, lo, hi, ZoneInfo("UTC"))
    monkeypatch.undo()
    assert cover(engine, "UTC") == {date(2026, 5, 3), date(2026, 5, 4)}
    got = analytics.time_in_status(engine, lo, hi, "UTC")
    pd.testing.assert_frame_equal(
        got, analytics.time_in_status(engine, lo, hi, "UTC", rollup=False), check_dtype=False
    )


def test_cached_seconds_in_floating_point_equal_the_numeric_division(engine):
    """The cached rows' seconds (``us::float8 / 1000000``) are the computed rows'
    ``(us::numeric / 1000000)::float8``, bit for bit: for 400,000 microsecond counts
    spread over five days' worth (a fixed multiplicative sequence, so every odd digit
    pattern turns up) and the edges."""
    with engine.connect() as conn:
        differ = conn.execute(
            text(
                """
                select count(*) from (
                    select (g::bigint * 2654435761) % 432000000000 as us
                    from generate_series(1, 400000) g
                    union all
                    select unnest(array[0, 1, 999999, 1000000, 1000001, 86399999999,
                                        86400000000, 90000000001, 9007199254740991])
                ) x
                where (us::float8 / 1000000) is distinct from (us::numeric / 1000000)::float8
                """
            )
        ).scalar()
    assert differ == 0
