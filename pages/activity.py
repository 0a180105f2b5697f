"""Activity: users present over time, when people are around, how long they stay.

What a rerun costs is the browser's drawing, not the data (cached): the page sends
as little as it can and redraws only what changed. The curve's times go as numbers
(milliseconds of the viewer's wall-clock time), not as strings; the curve with its
bucket, and one user's timeline with its user, are fragments, so changing the bucket
or the user reruns and redraws that part alone.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative
from presence_core.dashboard import data, ui

from presence_core import analytics
from presence_core.status import AMBER, GRAY, GREEN

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
CHART = {"displayModeBar": False}
DEFAULT_BUCKET = "hour"
STATUS_COLORS = {"online": GREEN, "away": AMBER, "busy": "#ef4444", "idle": GRAY}

st.title("Activity")
zone = ui.viewer_zone()
today = datetime.now(UTC).astimezone(zone).date()
hidden = ui.include_hidden()  # an administrator who asked for users who hide their times
choices = data.load(analytics.filter_choices, include_hidden=hidden)

c1, c2, c3 = st.columns([2, 1, 1])
start, end = ui.period_picker("act_period", today, where=c1)
team_filter, type_filter = ui.team_type_pickers(choices, "act", team_in=c2, type_in=c3)
days = (end - start).days + 1
st.caption(f"{start} to {end} ({days} day{'s' * (days != 1)}), times in {zone.key}.")
filters = {"tz": zone.key, "user_type": type_filter, "team": team_filter}


def wall_ms(times: pd.Series, zone: ZoneInfo) -> np.ndarray:
    """UTC instants as milliseconds of the wall-clock time in ``zone``, for a plotly
    date axis (which shows a number as that UTC time): the viewer reads their own
    clock, and the figure carries 8 bytes a point instead of a 26-character string
    that the browser parses again at every redraw."""
    local = pd.to_datetime(times, utc=True).dt.tz_convert(zone.key).dt.tz_localize(None)
    return local.to_numpy(dtype="datetime64[ms]").astype("int64").astype("float64")


def shown_bucket(days: int, bucket: str) -> str:
    """The bucket the curve is drawn with: the one chosen, widened for long periods so
    that no more than ``data.MAX_ROWS`` buckets reach the browser."""
    return analytics.bucket_for(days, bucket, data.MAX_ROWS)


@st.fragment
def present_over_time(start: date, end: date, days: int, filters: dict) -> None:
    """Users present over time with its bucket: a fragment, so that choosing another
    bucket reruns and redraws the curve alone."""
    st.subheader("Users present over time")
    chosen = st.selectbox("Bucket", list(analytics.BUCKETS), index=2, key="act_bucket", width=200)
    bucket = shown_bucket(days, chosen)
    if bucket != chosen:
        st.caption(f"Long period: shown per {bucket}.")
    curve = data.load(analytics.concurrency, start, end, bucket, **filters)
    if curve.empty or (curve["peak"].fillna(0) == 0).all():
        ui.empty_state(
            "Nobody was present in this period. Pick another period, or start the listener "
            "(`presence listen`) or the demo (`presence demo`)."
        )
        return
    m1, m2, m3 = st.columns(3)
    m1.metric("Peak present", int(curve["peak"].max()))
    m2.metric("Mean present", f"{curve['mean'].mean():.1f}")
    busiest = curve.loc[curve["peak"].idxmax(), "bucket"]
    m3.metric("Busiest", ui.format_time(busiest, zone)[:16])
    x = wall_ms(curve["bucket"], zone)
    figure = go.Figure()
    figure.add_scatter(
        x=x,
        y=curve["peak"].to_numpy(dtype="float64"),
        name="peak",
        line={"color": GREEN, "shape": "hv"},
    )
    figure.add_scatter(
        x=x,
        y=curve["mean"].to_numpy(dtype="float64"),
        name="mean",
        line={"color": AMBER, "shape": "hv"},
    )
    figure.update_layout(
        height=320,
        margin={"l": 0, "r": 0, "t": 10, "b": 0},
        legend={"orientation": "h", "y": 1.1},
        hovermode="x unified",
        yaxis_title="users present",
        xaxis={
            "type": "date",  # numbers on it are times
            "hoverformat": "%Y-%m-%d %H:%M",
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


# the page's queries run at once; drawing waits for the slowest only. The curve's is
# the one its fragment reads next (a cache hit), at the bucket chosen last time.
bucket = shown_bucket(days, st.session_state.get("act_bucket", DEFAULT_BUCKET))
_, heat, dau, lengths = data.gather(
    lambda: data.load(analytics.concurrency, start, end, bucket, **filters),
    lambda: data.load(analytics.weekday_hour_heatmap, start, end, **filters),
    lambda: data.load(analytics.daily_active_users, start, end, **filters),
    lambda: data.load(analytics.session_length_distribution, start, end, **filters),
)

present_over_time(start, end, days, filters)

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
@st.fragment
def one_users_sessions(start: date, end: date, hidden: bool) -> None:
    """One user's sessions coloured by status: a fragment, so that choosing a user
    reruns and redraws this part alone."""
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
        return
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
        return
    name = names.get(user) or user
    begins = wall_ms(segments["start"], zone)
    ends = wall_ms(segments["end"], zone)
    lengths = np.array([ui.format_duration(s) for s in segments["seconds"]], dtype=object)
    statuses = sorted(segments["status"].unique())
    figure = go.Figure()
    for i, status in enumerate(statuses):
        mine = (segments["status"] == status).to_numpy()
        # one bar per stretch, from its start (base) for its length, on a date axis
        figure.add_bar(
            orientation="h",
            base=begins[mine],
            x=ends[mine] - begins[mine],
            y=[name] * int(mine.sum()),
            name=status,
            marker_color=STATUS_COLORS.get(status, qualitative.Safe[i % len(qualitative.Safe)]),
            customdata=lengths[mine],
            hovertemplate=f"{status}<br>%{{base|%Y-%m-%d %H:%M}} for %{{customdata}}"
            "<extra></extra>",
        )
    figure.update_layout(
        height=200,
        barmode="overlay",
        margin={"l": 0, "r": 0, "t": 10, "b": 0},
        legend={"orientation": "h", "y": 1.15},
        xaxis={"type": "date"},
        yaxis={"title": ""},
    )
    st.plotly_chart(figure, width="stretch", config=CHART, key="act_timeline")
    st.caption(
        f"{segments['session'].nunique()} session(s), "
        f"{ui.format_duration(segments['seconds'].sum())} present in total."
    )


one_users_sessions(start, end, hidden)
