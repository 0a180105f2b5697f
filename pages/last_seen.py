"""Last seen: every user with the guide's status text and the exact time in the viewer's zone."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st
from presence_core.dashboard import data, ui

SORTS = {
    "Most recently seen": None,
    "Name": "Name",
    "Status": "Status",
    "Team": "Team",
}

st.title("Last seen")
zone = ui.viewer_zone()
st.caption(f"Every user, as the guide shows them. Times in {zone.key}.")

users = data.last_seen(include_hidden=False)
if users.empty:
    ui.empty_state()
    st.stop()

choices = data.choices()
search = st.text_input(
    "Search", placeholder="name or id", key="ls_search", label_visibility="collapsed"
)
c1, c2, c3, c4 = st.columns(4)
types = c1.multiselect("Type", choices["user_type"], key="ls_type")
teams = c2.multiselect("Team", choices["team"], key="ls_team")
statuses = c3.multiselect("Status", sorted(set(users["status"])), key="ls_status")
sort = c4.selectbox("Sort by", list(SORTS), key="ls_sort")

if search:
    needle = search.strip().lower()
    users = users[
        users["user_id"].astype(str).str.lower().str.contains(needle, regex=False)
        | users["user_name"].fillna("").str.lower().str.contains(needle, regex=False)
    ]
if types:
    users = users[users["user_type"].isin(types)]
if teams:
    users = users[users["team"].isin(teams)]
if statuses:
    users = users[users["status"].isin(statuses)]

now = datetime.now(UTC)
texts, dots = [], []
for row in users.itertuples(index=False):
    text, color = ui.status_text(row.status, row.last_seen, bool(row.hide_last_seen), now, zone)
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
            "hidden" if hidden else ui.format_time(seen, zone)
            for seen, hidden in zip(users["last_seen"], users["hide_last_seen"], strict=True)
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
