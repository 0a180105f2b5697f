"""Health: is the listener alive, are events arriving, how big is the database, and how
far behind is the read replica (when the dashboard reads from one)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st
from presence_core.dashboard import data, ui

from presence_core import analytics

REPLICA_LAG_WARNING = 60  # seconds behind the primary before the page warns

st.title("Health")
zone = ui.viewer_zone()
report = data.load(analytics.health.report, data.settings(), ttl=data.TABLE_TTL)


def _age(delta) -> str:
    return "never" if delta is None else f"{ui.format_duration(delta.total_seconds())} ago"


alive = report.listener_alive
if alive:
    st.success(
        f"**Listener alive** since {ui.format_time(report.alive_since, zone)}.",
        icon=":material/check_circle:",
    )
elif report.listeners:
    latest = report.listeners[0]
    st.error(
        f"**No listener is alive.** The last heartbeat came from `{latest.listener}` "
        f"{_age(latest.heartbeat_age)}. Start one with `presence listen`.",
        icon=":material/error:",
    )
else:
    st.warning(
        "**No listener has ever run** against this database. Start one with "
        "`presence listen` (or everything at once with `presence demo`).",
        icon=":material/warning:",
    )

per_minute = pd.DataFrame(report.events_per_minute, columns=["minute", "events"])
cols = st.columns(4)
cols[0].metric("Listener", "alive" if alive else "down")
cols[1].metric("Last event", _age(report.last_event_age))
cols[2].metric("Events in the last minute", int(per_minute["events"].iloc[-1]))
cols[3].metric("Events per minute (1 h avg)", f"{per_minute['events'].mean():.1f}")

st.subheader("Events per minute")
per_minute["minute"] = per_minute["minute"].dt.tz_convert(zone.key)
figure = px.bar(per_minute, x="minute", y="events", labels={"minute": "", "events": "events"})
figure.update_layout(height=220, margin={"l": 0, "r": 0, "t": 10, "b": 0})
st.plotly_chart(figure, width="stretch", config={"displayModeBar": False})

st.subheader("Listeners")
if report.listeners:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "listener": item.listener,
                    "alive": item.alive,
                    "connected": item.connected,
                    "server": item.server_url,
                    "host": item.host,
                    "pid": item.pid,
                    "started": ui.format_time(item.started_at, zone),
                    "heartbeat": _age(item.heartbeat_age),
                    "last event": ui.format_time(item.last_event_at, zone),
                    "events received": item.events_received,
                    "transitions written": item.transitions_written,
                    "stopped": ui.format_time(item.stopped_at, zone),
                }
                for item in report.listeners[:200]
            ]
        ),
        hide_index=True,
        width="stretch",
    )
else:
    st.caption("No listener heartbeat recorded.")

st.subheader("Coverage gaps (last 24 h)")
gaps = data.load(analytics.recent_coverage_gaps, 24, ttl=data.TABLE_TTL)
if gaps.empty:
    st.caption("None: a listener watched the whole time.")
else:
    st.caption(
        'While no listener was connected, "offline" means "not observed". '
        f"{len(gaps)} gap(s), {ui.format_duration(gaps['seconds'].sum())} in total."
    )
    st.dataframe(
        pd.DataFrame(
            {
                "from": [ui.format_time(t, zone) for t in gaps["gap_start"]],
                "to": [ui.format_time(t, zone) for t in gaps["gap_end"]],
                "length": [ui.format_duration(s) for s in gaps["seconds"]],
            }
        ).tail(500),
        hide_index=True,
        width="stretch",
    )

st.subheader("Database")
left, right = st.columns(2)
with left:
    st.dataframe(
        pd.DataFrame(
            {
                "table": [t.table for t in report.tables],
                "rows": [t.rows for t in report.tables],
                "counted": ["exactly" if t.exact else "estimate" for t in report.tables],
            }
        ),
        hide_index=True,
        width="stretch",
    )
with right:
    st.metric("Database size", f"{report.database_bytes / 1024 / 1024:,.1f} MB")
    if report.on_replica:
        lag = report.replica_lag.total_seconds()
        shown = "none" if lag == 0 else "< 1s" if lag < 1 else ui.format_duration(lag)
        st.metric("Replica lag", shown)
        where = "a streaming replica (`PRESENCE_READ_DATABASE_URL`)"
        if not report.replica_streaming:
            st.error(
                "**The read replica receives nothing from its primary** (primary down, or "
                f"replication broken): it last replayed a change {ui.format_duration(lag)} "
                "ago, and every page shows the data as of then.",
                icon=":material/sync_problem:",
            )
        elif lag >= REPLICA_LAG_WARNING:
            st.warning(
                f"The read replica is {ui.format_duration(lag)} behind its primary: every "
                "page shows the data as of then (a listener may look late for that long).",
                icon=":material/schedule:",
            )
    else:
        st.metric("Replica lag", "primary")
        where = "the primary: no read replica is configured"
    st.markdown(
        f"**Database:** `{report.database_url}`"
        + (" (embedded)" if report.embedded else "")
        + f"  \n**Reads from:** {where}"
        + f"  \n**Presence server:** `{report.server_url}`"
    )
st.caption(f"Checked {ui.format_time(report.checked_at, zone)}")
