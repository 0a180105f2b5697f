"""Activity: users present over time, when people are around, how long they stay."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from presence_core.dashboard import data, ui

from presence_core import analytics
from presence_core.status import AMBER, GRAY, GREEN

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
CHART = {"displayModeBar": False}

st.title("Activity")
zone = ui.viewer_zone()
today = datetime.now(UTC).astimezone(zone).date()
hidden = ui.include_hidden()  # an administrator who asked for users who hide their times
choices = data.load(analytics.filter_choices, include_hidden=hidden)

c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
start, end = ui.period_picker("act_period", today, where=c1)
bucket = c2.selectbox("Bucket", list(analytics.BUCKETS), index=2, key="act_bucket")
team_filter, type_filter = ui.team_type_pickers(choices, "act", team_in=c3, type_in=c4)
days = (end - start).days + 1
st.caption(f"{start} to {end} ({days} day{'s' * (days != 1)}), times in {zone.key}.")

# never more than data.MAX_ROWS buckets: widen the bucket for long periods
shown_bucket = analytics.bucket_for(days, bucket, data.MAX_ROWS)
if shown_bucket != bucket:
    bucket = shown_bucket
    st.caption(f"Long period: shown per {bucket}.")


def _local(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True).dt.tz_convert(zone.key)


# the page's queries run at once; drawing waits for the slowest only
filters = {"tz": zone.key, "user_type": type_filter, "team": team_filter}
curve, heat, dau, lengths = data.gather(
    lambda: data.load(analytics.concurrency, start, end, bucket, **filters),
    lambda: data.load(analytics.weekday_hour_heatmap, start, end, **filters),
    lambda: data.load(analytics.daily_active_users, start, end, **filters),
    lambda: data.load(analytics.session_length_distribution, start, end, **filters),
)

# --- users present over time --------------------------------------------------
st.subheader("Users present over time")
if curve.empty or (curve["peak"].fillna(0) == 0).all():
    ui.empty_state(
        "Nobody was present in this period. Pick another period, or start the listener "
        "(`presence listen`) or the demo (`presence demo`)."
    )
else:
    m1, m2, m3 = st.columns(3)
    m1.metric("Peak present", int(curve["peak"].max()))
    m2.metric("Mean present", f"{curve['mean'].mean():.1f}")
    busiest = curve.loc[curve["peak"].idxmax(), "bucket"]
    m3.metric("Busiest", ui.format_time(busiest, zone)[:16])
    frame = curve.assign(bucket=_local(curve["bucket"]))
    figure = go.Figure()
    figure.add_scatter(
        x=frame["bucket"], y=frame["peak"], name="peak", line={"color": GREEN, "shape": "hv"}
    )
    figure.add_scatter(
        x=frame["bucket"], y=frame["mean"], name="mean", line={"color": AMBER, "shape": "hv"}
    )
    figure.update_layout(
        height=320,
        margin={"l": 0, "r": 0, "t": 10, "b": 0},
        legend={"orientation": "h", "y": 1.1},
        hovermode="x unified",
        yaxis_title="users present",
        xaxis={
            "rangeslider": {"visible": True, "thickness": 0.08},
            "rangeselector": {
                "buttons": [
                    {"count": 1, "label": "1d", "step": "day", "stepmode": "backward"},
                    {"count": 7, "label": "1w", "step": "day", "stepmode": "backward"},
                    {"step": "all", "label": "all"},
                ]
            },
        },
    )
    st.plotly_chart(figure, width="stretch", config=CHART, key="act_curve")

# --- weekday x hour and daily active users ------------------------------------
left, right = st.columns(2)
with left:
    st.subheader("When people are around")
    if heat.empty:
        st.caption("No data in this period.")
    else:
        grid = (
            heat.pivot_table(index="weekday", columns="hour", values="value", aggfunc="mean")
            .reindex(index=range(7), columns=range(24))
            .fillna(0.0)
        )
        # graph_objects, not plotly.express: express costs about 0.1 s of Python per
        # chart at every rerun (its argument handling), the page's three charts 0.4 s
        figure = go.Figure(
            go.Heatmap(
                z=grid.to_numpy(),
                x=[f"{h:02d}" for h in range(24)],
                y=WEEKDAYS,
                colorscale=[[0.0, "#f3f4f6"], [1.0, GREEN]],
                colorbar={"title": {"text": "mean present"}},
                hovertemplate="%{y} %{x}:00<br>mean present %{z:.1f}<extra></extra>",
            )
        )
        figure.update_layout(
            height=300,
            margin={"l": 0, "r": 0, "t": 10, "b": 0},
            xaxis_title="hour",
            yaxis={"autorange": "reversed"},  # Monday on top
        )
        st.plotly_chart(figure, width="stretch", config=CHART, key="act_heat")
with right:
    st.subheader("Daily active users")
    if dau.empty:
        st.caption("No data in this period.")
    else:
        figure = go.Figure(go.Bar(x=dau["date"], y=dau["active_users"], marker_color=GREEN))
        figure.update_layout(
            height=300, margin={"l": 0, "r": 0, "t": 10, "b": 0}, yaxis_title="active users"
        )
        st.plotly_chart(figure, width="stretch", config=CHART, key="act_dau")

# --- session lengths ---------------------------------------------------------
st.subheader("How long sessions last")
if lengths["sessions"].sum() == 0:
    st.caption("No finished sessions in this period.")
else:
    labels = [
        f"{ui.format_duration(lo)}–{ui.format_duration(hi)}"
        if hi is not None and not pd.isna(hi)
        else f"{ui.format_duration(lo)}+"
        for lo, hi in zip(lengths["lower_seconds"], lengths["upper_seconds"], strict=True)
    ]
    labels[0] = labels[0].replace("0s–", "< ")
    figure = go.Figure(go.Bar(x=labels, y=lengths["sessions"], marker_color=GREEN))
    figure.update_layout(height=260, margin={"l": 0, "r": 0, "t": 10, "b": 0})
    st.plotly_chart(figure, width="stretch", config=CHART, key="act_lengths")

# --- one user's timeline -----------------------------------------------------
st.subheader("One user's sessions")
names = data.load(analytics.user_names, include_hidden=hidden)
user = st.selectbox(
    "User",
    choices["user_id"],
    index=None,
    placeholder="choose a user",
    format_func=lambda uid: f"{names.get(uid) or uid} ({uid})" if names.get(uid) else uid,
    key="act_user",
)
if user is None:
    st.caption("Choose a user to see their sessions, coloured by status.")
else:
    segments = data.load(
        analytics.user_timeline,
        user,
        start,
        end,
        zone.key,
        max_rows=data.MAX_ROWS,
        include_hidden=hidden,
    )
    if segments.empty:
        st.caption("No sessions in this period.")
    else:
        segments = segments.assign(
            start=_local(segments["start"]),
            end=_local(segments["end"]),
            length=[ui.format_duration(s) for s in segments["seconds"]],
        )
        statuses = sorted(segments["status"].unique())
        palette = {s: px.colors.qualitative.Safe[i % 11] for i, s in enumerate(statuses)}
        palette.update({"online": GREEN, "away": AMBER, "busy": "#ef4444", "idle": GRAY})
        segments["user"] = names.get(user) or user
        figure = px.timeline(
            segments,
            x_start="start",
            x_end="end",
            y="user",
            color="status",
            color_discrete_map=palette,
            hover_data={"length": True, "user": False},
        )
        figure.update_yaxes(title="")
        figure.update_layout(
            height=200,
            margin={"l": 0, "r": 0, "t": 10, "b": 0},
            legend={"orientation": "h", "y": 1.15},
        )
        st.plotly_chart(figure, width="stretch", config=CHART, key="act_timeline")
        st.caption(
            f"{segments['session'].nunique()} session(s), "
            f"{ui.format_duration(segments['seconds'].sum())} present in total."
        )
