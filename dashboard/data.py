"""Data access for the pages: one engine per database, one cached loader for every read.

Pages never talk to the database themselves. They call a function of
``presence_core.analytics`` through :func:`load`::

    curve = data.load(analytics.concurrency, start, end, "hour", "UTC")

which calls ``analytics.concurrency(engine, start, end, "hour", "UTC")`` and caches
its result with ``st.cache_data``, keyed by the database the dashboard reads, the
function and its arguments (so pointing the dashboard elsewhere, in tests or with
``PRESENCE_DATABASE_URL`` or ``PRESENCE_READ_DATABASE_URL``, never mixes results).
A cached function is the loader, as in Streamlit's own examples; the ``ttl``
picks how fresh: a few seconds for live views, a minute for history.

A database that cannot be reached raises :class:`DatabaseDown`; the app shows
it and retries by itself (see ``dashboard.ui.database_down``).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

from presence_core import analytics, export
from presence_core.config import Settings, load_settings
from presence_core.database import engine as db
from presence_core.errors import PresenceError

LIVE_TTL = 1.5  # seconds; Live refreshes every 2 s
TABLE_TTL = 5
HISTORY_TTL = 60
MAX_ROWS = 50_000  # no page sends more rows than this to the browser

T = TypeVar("T")


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
    """Which databases the dashboard reads, as a cache key (never shown: may hold a password).

    The dashboard reads from ``PRESENCE_READ_DATABASE_URL`` (a streaming replica) when
    it is set, so the key names that database too: pointing the reads at another
    replica, or back at the primary, never serves results cached from the other."""
    current = current or settings()
    if current.database_url is None:
        key = f"embedded:{current.home}"
    else:
        key = current.database_url.render_as_string(hide_password=False)
    if current.read_database_url is not None:
        key += " read:" + current.read_database_url.render_as_string(hide_password=False)
    return key


def _dispose(engine: Engine) -> None:
    engine.dispose()


@st.cache_resource(show_spinner="Connecting to the database …", on_release=_dispose)
def _engine_for(key: str) -> Engine:
    # the key only separates databases; connect_reader() reads the same settings
    return db.connect_reader(settings())


def engine() -> Engine:
    """The engine the dashboard reads through: the streaming replica of
    ``PRESENCE_READ_DATABASE_URL`` when one is configured, else the configured
    database (the embedded one is started if needed). The dashboard only reads.

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


def call(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(engine, *args, **kwargs)`` uncached, connection errors turned into
    :class:`DatabaseDown`."""
    try:
        return func(engine(), *args, **kwargs)
    except OperationalError as exc:
        raise DatabaseDown(f"the database stopped answering: {_first_line(exc)}") from None
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        raise DatabaseDown(f"the database stopped answering: {_first_line(exc)}") from None


# One cached function per freshness: Streamlit keys a cache by the function, so
# each ttl needs its own. `name` and the arguments are the key; `_func` (not
# hashed: a leading underscore) is what runs.
@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def _live(key: str, name: str, args: tuple, kwargs: tuple, _func: Callable) -> Any:
    return call(_func, *args, **dict(kwargs))


@st.cache_data(ttl=TABLE_TTL, show_spinner=False)
def _table(key: str, name: str, args: tuple, kwargs: tuple, _func: Callable) -> Any:
    return call(_func, *args, **dict(kwargs))


@st.cache_data(ttl=HISTORY_TTL, show_spinner=False)
def _history(key: str, name: str, args: tuple, kwargs: tuple, _func: Callable) -> Any:
    return call(_func, *args, **dict(kwargs))


_LOADERS = {LIVE_TTL: _live, TABLE_TTL: _table, HISTORY_TTL: _history}


def load(func: Callable[..., T], *args: Any, ttl: float = HISTORY_TTL, **kwargs: Any) -> T:
    """``func(engine, *args, **kwargs)`` (a ``presence_core.analytics`` read), cached
    for ``ttl`` seconds (:data:`LIVE_TTL`, :data:`TABLE_TTL` or :data:`HISTORY_TTL`)
    per database and arguments. Raises :class:`DatabaseDown` when the database
    does not answer; nothing is cached then."""
    loader = _LOADERS.get(ttl)
    if loader is None:
        raise ValueError(f"ttl must be one of {sorted(_LOADERS)}, not {ttl!r}")
    name = f"{func.__module__}.{func.__qualname__}"
    return loader(database_key(), name, args, tuple(sorted(kwargs.items())), func)


def gather(*calls: Callable[[], Any]) -> list[Any]:
    """Run several loader calls at once (each on its own connection) and return their
    results in order; the first error (e.g. :class:`DatabaseDown`) is raised here.
    Pages use it so that a page's queries wait for each other's time only once."""
    if len(calls) < 2:
        return [call() for call in calls]
    ctx = get_script_run_ctx()

    def run(job: Callable[[], Any]) -> Any:
        if ctx is not None:
            add_script_run_ctx(threading.current_thread(), ctx)
        return job()

    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="loader") as pool:
        return list(pool.map(run, calls))


def clear() -> None:
    """Forget every cached result (not the engine)."""
    st.cache_data.clear()


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


def presence_now(
    team: str | None, user_type: str | None, include_hidden: bool
) -> list[Callable[[], Any]]:
    """The two live reads Live and Availability share, ready for :func:`gather`:
    who is present now, and everyone's last seen, for one team and type."""
    teams = None if team is None else [team]
    types = None if user_type is None else [user_type]
    return [
        lambda: load(
            analytics.current_presence,
            team=team,
            user_type=user_type,
            include_hidden=include_hidden,
            ttl=LIVE_TTL,
        ),
        lambda: load(
            analytics.last_seen_table,
            teams=teams,
            user_types=types,
            include_hidden=include_hidden,
            ttl=LIVE_TTL,
        ),
    ]
