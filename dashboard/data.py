"""Cached data access for the pages: one engine per database, short-lived results.

Pages never talk to the database themselves: they call the loaders here, which
call ``presence_core.analytics.queries``/``health``/``export`` and cache the results
(``st.cache_data`` with a ``ttl``: a few seconds for live views, a minute for
history). Every cache key includes the database the dashboard reads, so pointing
it elsewhere (tests, ``PRESENCE_DATABASE_URL``) never mixes results.

A database that cannot be reached raises :class:`DatabaseDown`; the app shows
it and retries by itself (see ``dashboard.ui.database_down``).
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, time, timedelta
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

from presence_core import export
from presence_core.analytics import health
from presence_core.analytics import queries as analytics
from presence_core.config import Settings, load_settings
from presence_core.database import engine as db
from presence_core.errors import PresenceError

LIVE_TTL = 1.5  # seconds; Live refreshes every 2 s
TABLE_TTL = 5
HISTORY_TTL = 60
MAX_ROWS = 50_000  # no page sends more rows than this to the browser


def _preload_charts() -> None:
    """Import plotly in the background (about a second): the first chart page then
    does not pay for it. This module is imported once per dashboard process."""
    import plotly.express  # noqa: F401


threading.Thread(target=_preload_charts, name="preload-plotly", daemon=True).start()


class DatabaseDown(PresenceError):
    """The database does not answer (or refused the dashboard)."""


def settings() -> Settings:
    """The product's settings from the environment (``PRESENCE_*``)."""
    return load_settings()


def database_key(current: Settings | None = None) -> str:
    """Which database the dashboard reads, as a cache key (never shown: may hold a password)."""
    current = current or settings()
    if current.database_url is None:
        return f"embedded:{current.home}"
    return current.database_url.render_as_string(hide_password=False)


def _dispose(engine: Engine) -> None:
    engine.dispose()


@st.cache_resource(show_spinner="Connecting to the database …", on_release=_dispose)
def _engine_for(key: str) -> Engine:
    # the key only separates databases; connect() reads the same settings
    return db.connect(settings())


def engine() -> Engine:
    """The engine on the configured database (the embedded one is started if needed).

    Raises :class:`DatabaseDown` when it cannot be reached; nothing is cached
    then, so the next call tries again.
    """
    try:
        return _engine_for(database_key())
    except db.DatabaseUnavailable as exc:
        raise DatabaseDown(str(exc)) from None
    except (OperationalError, DBAPIError) as exc:
        raise DatabaseDown(_first_line(exc)) from None


def check() -> None:
    """Raise :class:`DatabaseDown` unless the database answers now."""
    try:
        db.check_reachable(engine())
    except db.DatabaseUnavailable as exc:
        raise DatabaseDown(str(exc)) from None


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return lines[0] if lines else type(inner).__name__


def _run(func, *args: Any, **kwargs: Any):
    """Call an analytics function with the engine, turning connection errors into
    :class:`DatabaseDown`."""
    try:
        return func(engine(), *args, **kwargs)
    except OperationalError as exc:
        raise DatabaseDown(f"the database stopped answering: {_first_line(exc)}") from None
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        raise DatabaseDown(f"the database stopped answering: {_first_line(exc)}") from None


def gather(*calls: Callable[[], Any]) -> list[Any]:
    """Run several loader calls at once (each on its own connection) and return their
    results in order; the first error (e.g. :class:`DatabaseDown`) is raised here.
    Pages use it so that a page's queries wait for each other's time only once."""
    if len(calls) < 2:
        return [call() for call in calls]
    ctx = get_script_run_ctx()

    def run(call: Callable[[], Any]) -> Any:
        if ctx is not None:
            add_script_run_ctx(threading.current_thread(), ctx)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="loader") as pool:
        return list(pool.map(run, calls))


def clear() -> None:
    """Forget every cached result (not the engine)."""
    st.cache_data.clear()


# ---------------------------------------------------------------------------
# now


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def _current_presence(key: str, team: str | None, user_type: str | None) -> pd.DataFrame:
    return _run(analytics.current_presence, team=team, user_type=user_type)


def current_presence(team: str | None = None, user_type: str | None = None) -> pd.DataFrame:
    """Users present now (see ``analytics.current_presence``)."""
    return _current_presence(database_key(), team, user_type)


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def _last_seen(key: str, include_hidden: bool) -> pd.DataFrame:
    return _run(analytics.last_seen_table, include_hidden=include_hidden)


def last_seen(include_hidden: bool = False) -> pd.DataFrame:
    """Every user with status and last seen (see ``analytics.last_seen_table``)."""
    return _last_seen(database_key(), include_hidden)


@st.cache_data(ttl=HISTORY_TTL, show_spinner=False)
def _choices(key: str) -> dict[str, list[str]]:
    frame = _run(analytics.last_seen_table, include_hidden=False)

    def values(column: str) -> list[str]:
        return sorted({str(v) for v in frame[column].dropna().unique()})

    return {
        "team": values("team"),
        "user_type": values("user_type"),
        "status": values("status"),
        "user_id": sorted(frame["user_id"].astype(str)),
    }


def choices() -> dict[str, list[str]]:
    """Known teams, user types, current statuses and user ids, for filters."""
    return _choices(database_key())


# ---------------------------------------------------------------------------
# history


@st.cache_data(ttl=HISTORY_TTL, show_spinner=False)
def _concurrency(key, start, end, bucket, tz, user_type, team) -> pd.DataFrame:
    return _run(
        analytics.concurrency, start, end, bucket=bucket, tz=tz, user_type=user_type, team=team
    )


def concurrency(
    start: date | datetime,
    end: date | datetime | None,
    bucket: str,
    tz: str,
    user_type: str | None = None,
    team: str | None = None,
) -> pd.DataFrame:
    """Users present at once per bucket: ``bucket, peak, mean``."""
    return _concurrency(database_key(), start, end, bucket, tz, user_type, team)


@st.cache_data(ttl=HISTORY_TTL, show_spinner=False)
def _heatmap(key, start, end, tz, user_type, team) -> pd.DataFrame:
    return _run(analytics.weekday_hour_heatmap, start, end, tz=tz, user_type=user_type, team=team)


def heatmap(start, end, tz: str, user_type=None, team=None) -> pd.DataFrame:
    """Average users present by weekday × hour: ``weekday, hour, value``."""
    return _heatmap(database_key(), start, end, tz, user_type, team)


@st.cache_data(ttl=HISTORY_TTL, show_spinner=False)
def _daily_active(key, start, end, tz, user_type, team) -> pd.DataFrame:
    return _run(analytics.daily_active_users, start, end, tz=tz, user_type=user_type, team=team)


def daily_active(start, end, tz: str, user_type=None, team=None) -> pd.DataFrame:
    """Distinct users present per local day: ``date, active_users``."""
    return _daily_active(database_key(), start, end, tz, user_type, team)


@st.cache_data(ttl=HISTORY_TTL, show_spinner=False)
def _session_lengths(key, start, end, tz, user_type, team) -> pd.DataFrame:
    return _run(
        analytics.session_length_distribution,
        start,
        end,
        user_type=user_type,
        team=team,
        tz=tz,
    )


def session_lengths(start, end, tz: str, user_type=None, team=None) -> pd.DataFrame:
    """Closed sessions by length: ``lower_seconds, upper_seconds, sessions``."""
    return _session_lengths(database_key(), start, end, tz, user_type, team)


@st.cache_data(ttl=HISTORY_TTL, show_spinner=False)
def _sessions(key, start, end, tz, user_ids, user_type, team) -> pd.DataFrame:
    return _run(
        analytics.sessions,
        start,
        end,
        user_ids=None if user_ids is None else list(user_ids),
        user_type=user_type,
        team=team,
        tz=tz,
    )


def sessions(
    start, end, tz: str, user_ids: tuple[str, ...] | None = None, user_type=None, team=None
) -> pd.DataFrame:
    """Sessions overlapping the period (see ``analytics.sessions``)."""
    return _sessions(database_key(), start, end, tz, user_ids, user_type, team)


@st.cache_data(ttl=HISTORY_TTL, show_spinner=False)
def _time_in_status(key, start, end, tz, user_ids, user_type, team) -> pd.DataFrame:
    return _run(
        analytics.time_in_status,
        start,
        end,
        tz=tz,
        user_ids=None if user_ids is None else list(user_ids),
        user_type=user_type,
        team=team,
    )


def time_in_status(
    start, end, tz: str, user_ids: tuple[str, ...] | None = None, user_type=None, team=None
) -> pd.DataFrame:
    """Seconds per user, local day and present status: ``date, user_id, status, seconds``."""
    return _time_in_status(database_key(), start, end, tz, user_ids, user_type, team)


@st.cache_data(ttl=HISTORY_TTL, show_spinner=False)
def _availability(
    key, start_date, end_date, tz, shift_start, shift_end, statuses, team, user_type
) -> pd.DataFrame:
    return _run(
        analytics.availability,
        start_date,
        end_date,
        tz=tz,
        shift_start=shift_start,
        shift_end=shift_end,
        available_statuses=list(statuses),
        team=team,
        user_type=user_type,
    )


def availability(
    start_date: date,
    end_date: date,
    tz: str,
    shift_start: time,
    shift_end: time | None,
    statuses: tuple[str, ...],
    team: str | None = None,
    user_type: str | None = None,
) -> pd.DataFrame:
    """Availability per user per local day (see ``analytics.availability``)."""
    return _availability(
        database_key(), start_date, end_date, tz, shift_start, shift_end, statuses, team, user_type
    )


@st.cache_data(ttl=HISTORY_TTL, show_spinner=False)
def _online_seconds(key, start, end, tz, user_type, team) -> pd.DataFrame:
    return _run(
        analytics.online_seconds, start, end, tz=tz, user_type=user_type, team=team, per_day=False
    )


def online_seconds(start, end, tz: str, user_type=None, team=None) -> pd.DataFrame:
    """Seconds present per user over the whole period: ``user_id, online_seconds``."""
    return _online_seconds(database_key(), start, end, tz, user_type, team)


@st.cache_data(ttl=HISTORY_TTL, show_spinner=False)
def _daily_summary(key, start, end, tz, user_type, team, statuses) -> pd.DataFrame:
    return _run(
        analytics.daily_summary,
        start,
        end,
        tz=tz,
        user_type=user_type,
        team=team,
        available_statuses=list(statuses),
    )


def daily_summary(start, end, tz: str, user_type=None, team=None, statuses=("online",)):
    """One row per user per local day (see ``analytics.daily_summary``)."""
    return _daily_summary(database_key(), start, end, tz, user_type, team, tuple(statuses))


# ---------------------------------------------------------------------------
# health


@st.cache_data(ttl=TABLE_TTL, show_spinner=False)
def _health(key: str) -> health.HealthReport:
    return _run(health.report, settings())


def health_report() -> health.HealthReport:
    """The Health page's figures (see ``presence_core.analytics.health.report``)."""
    return _health(database_key())


@st.cache_data(ttl=TABLE_TTL, show_spinner=False)
def _coverage_gaps(key: str, hours: int) -> pd.DataFrame:
    start = pd.Timestamp.now(tz="UTC").to_pydatetime() - timedelta(hours=hours)
    return _run(analytics.coverage_gaps, start, None)


def coverage_gaps(hours: int = 24) -> pd.DataFrame:
    """When no listener was watching in the last ``hours``: ``gap_start, gap_end, seconds``."""
    return _coverage_gaps(database_key(), hours)


@st.cache_data(ttl=HISTORY_TTL, show_spinner=False)
def _user_names(key: str) -> dict[str, str]:
    frame = _run(analytics.last_seen_table, include_hidden=False)
    named = frame[frame["user_name"].notna()]
    return dict(zip(named["user_id"].astype(str), named["user_name"].astype(str), strict=True))


def user_names() -> dict[str, str]:
    """User id → name, for users that have one."""
    return _user_names(database_key())


TIMELINE_COLUMNS = ("session", "status", "start", "end", "seconds", "length")


@st.cache_data(ttl=HISTORY_TTL, show_spinner=False)
def _user_timeline(key, user_id, start, end, tz) -> pd.DataFrame:
    found = _run(analytics.sessions, start, end, user_ids=[user_id], tz=tz)
    if found.empty:
        return pd.DataFrame({c: [] for c in TIMELINE_COLUMNS})
    found = found.head(MAX_ROWS).reset_index(drop=True)
    # the statuses inside the sessions, from the user's transitions (via the export)
    changes = _run(_transitions_of, user_id, found["started_at"].min().to_pydatetime(), end, tz)
    period_start = pd.Timestamp(analytics.period_params(start, end, tz)["start"])
    rows = []
    for i, (s, e) in enumerate(zip(found["started_at"], found["ended_at"], strict=True)):
        inside = [(at, st_) for at, st_ in changes if s <= at < e]
        if not inside or inside[0][0] > s:
            inside.insert(0, (s, inside[0][1] if inside else "online"))
        for j, (at, status) in enumerate(inside):
            until = inside[j + 1][0] if j + 1 < len(inside) else e
            lo = max(at, period_start)
            if until > lo and status != "offline":
                rows.append({"session": i, "status": status, "start": lo, "end": until})
    frame = pd.DataFrame(rows, columns=["session", "status", "start", "end"])
    frame["seconds"] = [
        (e - s).total_seconds() for s, e in zip(frame["start"], frame["end"], strict=True)
    ]
    frame["length"] = [_short(sec) for sec in frame["seconds"]]
    return frame.head(MAX_ROWS)


def _transitions_of(engine: Engine, user_id: str, start, end, tz) -> list[tuple[pd.Timestamp, str]]:
    """(occurred_at, status) of one user's transitions, oldest first."""
    chunks = export.stream_export(
        engine,
        "transitions",
        "jsonl",
        export.ExportFilters(start=start, end=end, user_ids=(user_id,), include_hidden=True, tz=tz),
    )
    rows = [json.loads(line) for line in b"".join(chunks).splitlines() if line.strip()]
    return sorted((pd.Timestamp(r["occurred_at"]), r["status"]) for r in rows)


def user_timeline(user_id: str, start, end, tz: str) -> pd.DataFrame:
    """One user's sessions overlapping the period, split where the status changed:
    ``session, status, start, end, seconds, length``."""
    return _user_timeline(database_key(), user_id, start, end, tz)


def _short(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


# ---------------------------------------------------------------------------
# export


def export_file(engine: Engine, dataset: str, fmt: str, filters: export.ExportFilters):
    """The whole export as an unbuffered temporary file (``io.FileIO``, rewound),
    written chunk by chunk from ``export.stream_export``: rows go from PostgreSQL
    to disk, never collected in memory. For ``st.download_button``'s deferred
    ``data`` callable, which runs outside the page's script (so the engine is
    passed in). Streamlit then serves the file from its media store."""
    out = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115 - returned open
    try:
        for chunk in export.stream_export(engine, dataset, fmt, filters):
            out.write(chunk)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out
