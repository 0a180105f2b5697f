"""The product's metrics, computed in PostgreSQL (DESIGN "Metrics": one definition each).

Every function takes an engine and parameters and returns a small pandas
DataFrame of aggregates; the SQL does the work (window functions over the
transitions, ``generate_series`` for days and buckets, multiranges for coverage).
The conventions every function shares (periods, time zones, filters, sessions)
are in :mod:`presence_core.analytics.common`.

One module per family of metric, all re-exported here, so callers write
``from presence_core import analytics; analytics.sessions(engine, ...)``:

- ``presence``: now (current presence, counts, last seen, filter choices)
- ``sessions``: sessions, time in status, online seconds, session lengths
- ``flapping``: users whose status changes many times within a short window
- ``availability``: availability for a shift, first in / last out
- ``staffing``: each team's current and last shift, who is available, away or offline
- ``feed``: the latest changes of status (the Live feed)
- ``concurrency``: users present at once, weekday × hour heatmap, daily active users
- ``daily``: the daily summary (export ``daily``)
- ``coverage``: when no listener was watching
- ``timeline``: one user's timeline
- ``rollups``: maintenance of the per-minute concurrency rollup (not a read)
- ``summaries``: reads from the summaries kept on write (sessions, time in status)
- ``health``: the Health page's figures (``analytics.health.report``)
- ``sql`` and ``common``: the shared SQL blocks and helpers
"""

import sys

from presence_core.analytics import health
from presence_core.analytics.availability import (
    AGENT_COLUMNS,
    agent_summary,
    availability,
    first_in_last_out,
    shift_windows,
)
from presence_core.analytics.common import (
    BUCKETS,
    DEFAULT_AVAILABLE,
    DEFAULT_LENGTH_BINS,
    OFFLINE,
    period_params,
    resolve_period,
    time_zone,
)
from presence_core.analytics.concurrency import (
    ROLLUP_WORTH,
    bucket_for,
    concurrency,
    daily_active_users,
    weekday_hour_heatmap,
)
from presence_core.analytics.coverage import coverage_gaps, recent_coverage_gaps
from presence_core.analytics.daily import (
    DAILY_COLUMNS,
    daily_params,
    daily_summary,
    daily_summary_query,
    daily_summary_sql,
)
from presence_core.analytics.feed import FEED_COLUMNS, change_kind, latest_changes
from presence_core.analytics.flapping import flapping_users
from presence_core.analytics.presence import (
    away_users,
    count_by,
    current_presence,
    filter_choices,
    last_seen_table,
    presence_counts,
    recently_left,
    user_names,
)
from presence_core.analytics.rollups import refresh_rollups
from presence_core.analytics.sessions import (
    SESSION_COLUMNS,
    online_seconds,
    session_length_distribution,
    sessions,
    sessions_sql,
    time_in_status,
)
from presence_core.analytics.staffing import (
    ROSTER_COLUMNS,
    STAFFING_COLUMNS,
    TeamShift,
    last_shift_availability,
    plan_shifts,
    roster,
    staffing,
    state_of,
    team_shifts,
)
from presence_core.analytics.summaries import status_seconds
from presence_core.analytics.timeline import TIMELINE_COLUMNS, user_timeline

__all__ = [
    "AGENT_COLUMNS",
    "BUCKETS",
    "DAILY_COLUMNS",
    "FEED_COLUMNS",
    "DEFAULT_AVAILABLE",
    "DEFAULT_LENGTH_BINS",
    "OFFLINE",
    "ROLLUP_WORTH",
    "ROSTER_COLUMNS",
    "SESSION_COLUMNS",
    "STAFFING_COLUMNS",
    "TIMELINE_COLUMNS",
    "TeamShift",
    "agent_summary",
    "availability",
    "away_users",
    "bucket_for",
    "change_kind",
    "concurrency",
    "count_by",
    "coverage_gaps",
    "current_presence",
    "daily_active_users",
    "daily_params",
    "daily_summary",
    "daily_summary_query",
    "daily_summary_sql",
    "filter_choices",
    "first_in_last_out",
    "flapping_users",
    "health",
    "last_seen_table",
    "last_shift_availability",
    "latest_changes",
    "online_seconds",
    "period_params",
    "plan_shifts",
    "presence_counts",
    "recent_coverage_gaps",
    "recently_left",
    "refresh_rollups",
    "resolve_period",
    "roster",
    "session_length_distribution",
    "sessions",
    "sessions_sql",
    "status_seconds",
    "shift_windows",
    "staffing",
    "state_of",
    "time_in_status",
    "team_shifts",
    "time_zone",
    "user_names",
    "user_timeline",
    "weekday_hour_heatmap",
]

# Deprecated: the module was presence_core/analytics/queries.py. `from
# presence_core.analytics import queries` still gives this face (same names) for
# callers not yet moved to `from presence_core import analytics`.
queries = sys.modules[__name__]
