"""Availability: for team leads, who was available during the shift, and who is now."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pandas as pd
import streamlit as st
from presence_core.dashboard import data, ui

from presence_core import analytics
from presence_core.status import GREEN

st.title("Availability")
viewer = ui.viewer_zone()
hidden = ui.include_hidden()  # an administrator who asked for users who hide their times
choices = data.load(analytics.filter_choices)
settings = data.settings()

with st.container(border=True):
    c1, c2, c3 = st.columns(3)
    team_filter, type_filter = ui.team_type_pickers(choices, "av", team_in=c1, type_in=c2)
    zones = sorted(available_timezones() | {viewer.key})
    tz = c3.selectbox("Time zone", zones, index=zones.index(viewer.key), key="av_tz")
    today = datetime.now(UTC).astimezone(ZoneInfo(tz)).date()
    c4, c5, c6, c7 = st.columns([2, 1, 1, 1])
    start, end = ui.period_picker("av_days", today, days=1, label="Days", where=c4)
    whole_day = c7.checkbox("Whole day", value=False, key="av_whole_day")
    shift_start = c5.time_input("Shift starts", time(9, 0), key="av_from", disabled=whole_day)
    shift_end = c6.time_input("Shift ends", time(17, 0), key="av_to", disabled=whole_day)
    c8, c9 = st.columns([3, 1])
    known_statuses = sorted(set(choices["status"]) | set(settings.available_statuses) - {"offline"})
    statuses = c8.multiselect(
        "Statuses that count as available",
        [s for s in known_statuses if s != "offline"],
        default=list(settings.available_statuses),
        key="av_statuses",
    )
    limit = c9.number_input(
        "Away longer than (min)", min_value=1, max_value=24 * 60, value=15, key="av_limit"
    )

if whole_day:
    shift_start, shift_end = time(0), None
if not statuses:
    st.warning("Choose at least one status that counts as available.")
    st.stop()
shift_text = "the whole day" if shift_end is None else f"{shift_start:%H:%M}–{shift_end:%H:%M}"
st.caption(f"{start} to {end}, shift {shift_text} in {tz}; available = {', '.join(statuses)}.")

# --- right now -----------------------------------------------------------------
now = datetime.now(UTC)
include_offline = st.toggle("Count offline agents as away", value=False, key="av_offline")
# the page's queries run at once; drawing waits for the slowest only
present, everyone, away, per_user = data.gather(
    *data.presence_now(team_filter, type_filter, hidden),
    lambda: data.load(
        analytics.away_users,
        tuple(statuses),
        timedelta(minutes=int(limit)),
        team=team_filter,
        user_type=type_filter,
        include_offline=include_offline,
        include_hidden=hidden,
        ttl=data.LIVE_TTL,
    ),
    lambda: data.load(
        analytics.agent_summary,
        start,
        end,
        tz,
        shift_start,
        shift_end,
        tuple(statuses),
        team=team_filter,
        user_type=type_filter,
        include_hidden=hidden,
    ),
)
if everyone.empty:
    ui.empty_state()
    st.stop()

available_now = present[present["status"].isin(statuses)]

left, right = st.columns(2)
with left:
    st.subheader(f"Available now ({len(available_now)})")
    cards = [
        {
            "name": ui.display_name(r.user_id, r.user_name),
            "meta": f"{r.status} · since {ui.format_clock(r.status_since, viewer, now)}"
            if pd.notna(r.status_since)
            else r.status,
            "color": GREEN,
            "pulse": True,
        }
        for r in available_now.head(300).itertuples(index=False)
    ]
    with st.container(height=360, border=False):
        st.markdown(ui.user_cards(cards, "Nobody is available right now."), unsafe_allow_html=True)
with right:
    st.subheader(f"Away longer than {int(limit)} min ({len(away)})")
    if away.empty:
        st.caption("Nobody.")
    else:
        st.dataframe(
            pd.DataFrame(
                {
                    "agent": [
                        ui.display_name(u, n)
                        for u, n in zip(away["user_id"], away["user_name"], strict=True)
                    ],
                    "status": away["status"].to_numpy(),
                    "for": [
                        ui.format_duration((now - s.to_pydatetime()).total_seconds())
                        for s in away["status_since"]
                    ],
                    "since": [ui.format_time(s, viewer) for s in away["status_since"]],
                }
            ).head(data.MAX_ROWS),
            hide_index=True,
            width="stretch",
            height=min(35 * (len(away) + 1) + 3, 360),
        )

# --- per agent over the period --------------------------------------------------
st.subheader("Per agent")
if per_user.empty:
    ui.empty_state("No agents match these filters.")
    st.stop()

status_columns = [c for c in per_user.columns if c.startswith("in ")]
zone = ZoneInfo(tz)
shown = pd.DataFrame(
    {
        "agent": [
            ui.display_name(uid, name)
            for uid, name in zip(per_user["user_id"], per_user["user_name"], strict=True)
        ],
        "user": per_user["user_id"].astype(str).to_numpy(),
        "team": per_user["team"].to_numpy(),
        "availability": per_user["availability_pct"].round(1).to_numpy(),
        "available": [ui.format_duration(s) for s in per_user["available_seconds"]],
        "online": [ui.format_duration(s) for s in per_user["online_seconds"]],
        **{column: [ui.format_duration(s) for s in per_user[column]] for column in status_columns},
        "first in": [ui.format_time(t, zone)[:16] for t in per_user["first_in"]],
        "last out": [ui.format_time(t, zone)[:16] for t in per_user["last_out"]],
        "sessions": per_user["sessions"].to_numpy(),
    }
)
m1, m2, m3 = st.columns(3)
m1.metric("Agents", len(shown))
m2.metric("Mean availability", f"{per_user['availability_pct'].mean():.1f} %")
m3.metric("Available at some point", int((per_user["available_seconds"] > 0).sum()))
st.dataframe(
    ui.capped(shown, data.MAX_ROWS),
    hide_index=True,
    width="stretch",
    column_config={
        "availability": st.column_config.ProgressColumn(
            "availability", format="%.1f %%", min_value=0, max_value=100, width="medium"
        )
    },
)
st.caption(
    f"Availability = time in {', '.join(statuses)} inside the shift ÷ the shift's length. "
    "Online and time in each status count the whole days; first in and last out are the "
    "earliest session start and latest session end over the period."
)
