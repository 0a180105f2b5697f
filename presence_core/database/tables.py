"""The tables, as SQLAlchemy Core objects.

``migrations/`` creates and changes them; this module only describes them, for
queries and for ``alembic check`` (which compares it with the database).
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    Time,
    UniqueConstraint,
    false,
    func,
    text,
)

metadata = MetaData()

users = Table(
    "presence_users",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("user_type", Text),
    Column("user_name", Text),
    Column("team", Text),
    Column("status", Text, nullable=False, server_default=text("'offline'")),
    Column("status_since", DateTime(timezone=True)),
    Column("last_seen", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("hide_last_seen", Boolean, nullable=False, server_default=false()),
    Index("ix_presence_users_last_seen", "last_seen"),
    Index("ix_presence_users_team", "team"),
)

# Partitioned by month on occurred_at (migration 0004, presence_core.database.partitions).
# Identity columns on partitioned tables need PostgreSQL 17, so ids come from a sequence;
# the unique key, which includes the partition key, is the table's identity.
transitions = Table(
    "presence_transitions",
    metadata,
    Column(
        "id", BigInteger, nullable=False, server_default=text("nextval('presence_transition_ids')")
    ),
    Column("user_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("inferred", Boolean, nullable=False, server_default=false()),
    Column("reason", Text),
    Column("source", Text),
    # a replay of the same event inserts nothing: the listener relies on this key
    UniqueConstraint("user_id", "occurred_at", "status", name="uq_presence_transitions_event"),
    # time-range scans across all users (concurrency, exports by period)
    Index("ix_presence_transitions_occurred_at", "occurred_at"),
)

# Each team's time zone and daily shift (migration 0003; `presence teams import`).
# shift_end at or before shift_start: the shift crosses midnight (equal: the whole
# day); see presence_core.shifts.
teams = Table(
    "presence_teams",
    metadata,
    Column("team", Text, primary_key=True),
    Column("time_zone", Text),
    Column("shift_start", Time),
    Column("shift_end", Time),
    Column("target_pct", Numeric),
    Column("work_days", Text),  # "Mon,Tue,Wed,Thu,Fri"; null: every day (shifts.parse_work_days)
)

coverage = Table(
    "presence_coverage",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("listener", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Index("ix_presence_coverage_listener_started", "listener", "started_at"),
)

# One row per listener process: its heartbeat, so the dashboard's Health page can
# tell whether it is alive (issue: listener observability).
listeners = Table(
    "presence_listeners",
    metadata,
    Column("listener", Text, primary_key=True),
    Column("server_url", Text),
    Column("host", Text),
    Column("pid", BigInteger),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("connected", Boolean, nullable=False, server_default=false()),
    Column("last_event_at", DateTime(timezone=True)),
    Column("events_received", BigInteger, nullable=False, server_default=text("0")),
    Column("transitions_written", BigInteger, nullable=False, server_default=text("0")),
    Column("stopped_at", DateTime(timezone=True)),
)

# Per UTC minute: the most users present at once and the user-seconds present
# (migration 0002). Computed by presence_core.analytics from the transitions;
# valid before presence_rollup_state's valid_until and dirty_from.
concurrency_minutes = Table(
    "presence_concurrency_minutes",
    metadata,
    Column("minute", DateTime(timezone=True), primary_key=True),
    Column("peak", Integer, nullable=False),
    Column("user_seconds", Float, nullable=False),
)

# Per UTC quarter-hour: the same figures summed from its 15 minutes (migration 0010;
# peak = their max, user_seconds = their sum), kept by the same refresh in the same
# transaction; a quarter is valid when it ends at or before the minutes' validity.
concurrency_quarters = Table(
    "presence_concurrency_quarters",
    metadata,
    Column("quarter", DateTime(timezone=True), primary_key=True),
    Column("peak", Integer, nullable=False),
    Column("user_seconds", Float, nullable=False),
)

# How far each rollup is valid; a trigger on presence_transitions lowers
# dirty_from to the earliest time any write touched.
rollup_state = Table(
    "presence_rollup_state",
    metadata,
    Column("name", Text, primary_key=True),
    Column("valid_until", DateTime(timezone=True)),
    Column("dirty_from", DateTime(timezone=True)),
)


# Daily active users per zone and whole past local day (migration 0009), computed on
# read from the summaries; valid for days ending at or before the 'daily_active'
# state row's dirty_from (readers delete the later ones first).
daily_active = Table(
    "presence_daily_active",
    metadata,
    Column("tz", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("day_end", DateTime(timezone=True), nullable=False),
    Column("active_users", Integer, nullable=False),
)

# Summaries kept on write (migration 0005): statement triggers on presence_transitions
# recompute them in the writer's transaction; presence_core.analytics.summaries reads them.
# Every session of positive length; ended_at is null while it is open.
sessions = Table(
    "presence_sessions",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("started_at", DateTime(timezone=True), primary_key=True),
    Column("ended_at", DateTime(timezone=True)),
    # each user's open session, closed in place by migration 0007's append path
    Index("ix_presence_sessions_open", "user_id", postgresql_where=text("ended_at is null")),
)

# Per user, UTC day and present status: cum[k + 1] = microseconds in that status in
# [midnight, midnight + 15 k minutes), k = 0..96, counting segments that have ended.
status_days = Table(
    "presence_status_days",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("status", Text, primary_key=True),
    Column("cum", ARRAY(BigInteger), nullable=False),
)

# Per user, the last transition's status and time (by occurred_at, id): the open segment.
status_tails = Table(
    "presence_status_tails",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
)

# Per zone, whole past local day and user: the daily summary's figures and the
# microseconds in each present status (migration 0011), computed on read from the
# summaries by presence_core.analytics.user_days; the (zone, day) pairs cached, for
# every user at once, are in presence_user_days_cover. Valid, like daily_active, for
# days ending at or before the 'daily_active' state row's dirty_from.
user_days_cover = Table(
    "presence_user_days_cover",
    metadata,
    Column("tz", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("day_end", DateTime(timezone=True), nullable=False),
)
user_days = Table(
    "presence_user_days",
    metadata,
    Column("tz", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("sessions", Integer),
    Column("online", Numeric),
    Column("first_online", DateTime(timezone=True)),
    Column("last_offline", DateTime(timezone=True)),
    Column("statuses", ARRAY(Text), nullable=False),
    Column("status_us", ARRAY(BigInteger), nullable=False),
    # a team's or a user's days as one range per member (migration 0012)
    Index("ix_presence_user_days_user", "tz", "user_id", "day"),
)

# Per min_n, window (microseconds) and whole past UTC day, the users with min_n
# transitions within a window starting that day (migration 0013), computed on read
# by presence_core.analytics.flapping; day_end is the day's end plus the window (the
# log they depend on), valid at or before the 'daily_active' state row's dirty_from.
flapping_days = Table(
    "presence_flapping_days",
    metadata,
    Column("min_n", Integer, primary_key=True),
    Column("window_us", BigInteger, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("day_end", DateTime(timezone=True), nullable=False),
    Column("user_ids", ARRAY(Text), nullable=False),
)
