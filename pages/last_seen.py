"""Last seen: every user with the guide's status text and the exact time in the viewer's zone."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st
from presence_core.dashboard import data, ui

from presence_core import analytics

SORTS = {
    "Most recently seen": None,
    "Name": "Name",
    "Status": "Status",
    "Team": "Team",
}

st.title("Last seen")
zone = ui.viewer_zone()
st.caption(f"Every user, as the guide shows them. Times in {zone.key}.")

hidden = ui.include_hidden()  # an administrator who asked for users who hide their times
choices = data.load(analytics.filter_choices, include_hidden=hidden)

search = st.text_input(
    "Search", placeholder="name or id", key="ls_search", label_visibility="collapsed"
)
c1, c2, c3, c4 = st.columns(4)
teams, types = ui.team_type_pickers(choices, "ls", team_in=c2, type_in=c1, multi=True)
statuses = c3.multiselect("Status", choices["status"], key="ls_status")
sort = c4.selectbox("Sort by", list(SORTS), key="ls_sort")

users = data.load(
    analytics.last_seen_table,
    search=search or None,
    teams=teams,
    user_types=types,
    statuses=statuses or None,
    include_hidden=hidden,
    ttl=data.LIVE_TTL,
)
if users.empty and not (search or teams or types or statuses):
    ui.empty_state()
    st.stop()

now = datetime.now(UTC)
texts, dots = [], []
for row in users.itertuples(index=False):
    text, color = ui.status_text(
        row.status, row.last_seen, bool(row.hide_last_seen) and not hidden, now, zone
    )
    texts.append(text)
    dots.append(color)

table = pd.DataFrame(
    {
        " ": [ui.dot_image(color) for color in dots],
        "User": users["user_id"].astype(str).to_numpy(),
        "Name": users["user_name"].to_numpy(),
        "Type": users["user_type"].to_numpy(),
        "Team": users["team"].to_numpy(),
        "Status": users["status"].to_numpy(),
        "Last seen": texts,
        f"Exact time ({zone.key})": [
            "hidden" if hides and not hidden else ui.format_time(seen, zone)
            for seen, hides in zip(users["last_seen"], users["hide_last_seen"], strict=True)
        ],
    }
)
if SORTS[sort]:
    table = table.sort_values(SORTS[sort], kind="stable", na_position="last")

st.caption(f"{len(table):,} users")
st.dataframe(
    ui.capped(table, data.MAX_ROWS),
    hide_index=True,
    width="stretch",
    height=min(35 * (len(table) + 1) + 3, 700),
    column_config={" ": st.column_config.ImageColumn(" ", width=32)},
)
