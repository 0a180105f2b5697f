"""Availability: for team leads, who was available during the shift, and who is now."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pandas as pd
import streamlit as st
from presence_core.dashboard import data, ui

from presence_core.status import GREEN

st.title("Availability")
viewer = ui.viewer_zone()
choices = data.choices()
settings = data.settings()

with st.container(border=True):
    c1, c2, c3 = st.columns(3)
    team = c1.selectbox("Team", ["All teams", *choices["team"]], key="av_team")
    user_type = c2.selectbox("Type", ["All types", *choices["user_type"]], key="av_type")
    zones = sorted(available_timezones() | {viewer.key})
    tz = c3.selectbox("Time zone", zones, index=zones.index(viewer.key), key="av_tz")
    today = datetime.now(UTC).astimezone(ZoneInfo(tz)).date()
    c4, c5, c6, c7 = st.columns([2, 1, 1, 1])
    picked = c4.date_input(
        "Days", value=(today, today), max_value=today, key="av_days", format="YYYY-MM-DD"
    )
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

team_filter = None if team == "All teams" else team
type_filter = None if user_type == "All types" else user_type
if isinstance(picked, (tuple, list)):
    start, end = (picked[0], picked[-1]) if picked else (today, today)
else:
    start = end = picked
start, end = min(start, end), max(start, end)
if whole_day:
    shift_start, shift_end = time(0), None
if not statuses:
    st.warning("Choose at least one status that counts as available.")
    st.stop()
shift_text = "the whole day" if shift_end is None else f"{shift_start:%H:%M}–{shift_end:%H:%M}"
st.caption(f"{start} to {end}, shift {shift_text} in {tz}; available = {', '.join(statuses)}.")

# --- right now -----------------------------------------------------------------
now = datetime.now(UTC)
# the page's queries run at once; drawing waits for the slowest only
filters = (tz, type_filter, team_filter)
present, everyone, avail, online, in_status, summary, found = data.gather(
    lambda: data.current_presence(team=team_filter, user_type=type_filter),
    lambda: data.last_seen(include_hidden=False),
    lambda: data.availability(
        start, end, tz, shift_start, shift_end, tuple(statuses), team_filter, type_filter
    ),
    lambda: data.online_seconds(start, end, *filters),
    lambda: data.time_in_status(start, end, tz, None, type_filter, team_filter),
    lambda: data.daily_summary(start, end, *filters, tuple(statuses)),
    lambda: data.sessions(start, end, tz, None, type_filter, team_filter),
)
if team_filter:
    everyone = everyone[everyone["team"] == team_filter]
if type_filter:
    everyone = everyone[everyone["user_type"] == type_filter]
if everyone.empty:
    ui.empty_state()
    st.stop()

available_now = present[present["status"].isin(statuses)]
cutoff = pd.Timestamp(now - timedelta(minutes=int(limit)))
include_offline = st.toggle("Count offline agents as away", value=False, key="av_offline")
away = everyone[
    ~everyone["status"].isin(statuses)
    & (include_offline | (everyone["status"] != "offline"))
    & everyone["status_since"].notna()
    & (everyone["status_since"] < cutoff)
].sort_values("status_since")

left, right = st.columns(2)
with left:
    st.subheader(f"Available now ({len(available_now)})")
    cards = [
        {
            "name": ui.display_name(r.user_id, r.user_name),
            "meta": f"{r.status} · since {ui.format_clock(r.status_since, viewer, now)}",
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
if avail.empty:
    ui.empty_state("No agents match these filters.")
    st.stop()

per_user = avail.groupby("user_id", as_index=False).agg(
    name=("user_name", "first"),
    team=("team", "first"),
    available_seconds=("available_seconds", "sum"),
    shift_seconds=("shift_seconds", "sum"),
)
per_user["availability"] = (
    100.0 * per_user["available_seconds"] / per_user["shift_seconds"].where(lambda s: s > 0)
).fillna(0.0)

per_user = per_user.merge(online, on="user_id", how="left")

status_columns: list[str] = []
if not in_status.empty:
    pivot = in_status.pivot_table(
        index="user_id", columns="status", values="seconds", aggfunc="sum", fill_value=0.0
    )
    status_columns = [f"in {s}" for s in pivot.columns]
    pivot.columns = status_columns
    per_user = per_user.merge(pivot.reset_index(), on="user_id", how="left")

if not summary.empty:
    firsts = summary.groupby("user_id").agg(
        first_in=("first_online", "min"), last_out=("last_offline", "max")
    )
    per_user = per_user.merge(firsts.reset_index(), on="user_id", how="left")
else:
    per_user["first_in"] = pd.NaT
    per_user["last_out"] = pd.NaT
counts = found.groupby("user_id").size().rename("sessions").reset_index()
per_user = per_user.merge(counts, on="user_id", how="left")
per_user = per_user.sort_values(["availability", "user_id"], ascending=[False, True])

zone = ZoneInfo(tz)
shown = pd.DataFrame(
    {
        "agent": [
            ui.display_name(uid, name)
            for uid, name in zip(per_user["user_id"], per_user["name"], strict=True)
        ],
        "user": per_user["user_id"].astype(str).to_numpy(),
        "team": per_user["team"].to_numpy(),
        "availability": per_user["availability"].round(1).to_numpy(),
        "available": [ui.format_duration(s) for s in per_user["available_seconds"]],
        "online": [ui.format_duration(s) for s in per_user["online_seconds"].fillna(0)],
        **{
            column: [ui.format_duration(s) for s in per_user[column].fillna(0)]
            for column in status_columns
        },
        "first in": [ui.format_time(t, zone)[:16] for t in per_user["first_in"]],
        "last out": [ui.format_time(t, zone)[:16] for t in per_user["last_out"]],
        "sessions": per_user["sessions"].fillna(0).astype(int).to_numpy(),
    }
)
m1, m2, m3 = st.columns(3)
m1.metric("Agents", len(shown))
m2.metric("Mean availability", f"{per_user['availability'].mean():.1f} %")
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
