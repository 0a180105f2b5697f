"""Live: who is here right now, refreshed every 2 seconds without reloading the page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import streamlit as st
from presence_core.dashboard import data, ui

from presence_core import analytics
from presence_core.status import AMBER, GREEN

REFRESH_SECONDS = 2
RECENT = timedelta(minutes=5)
MAX_CARDS = 500

st.title("Live")
st.caption("Who is here right now. Refreshes every 2 seconds.")

hidden = ui.include_hidden()  # an administrator who asked for users who hide their times
choices = data.load(analytics.filter_choices)
left, right, _ = st.columns([1, 1, 2])
team_filter, type_filter = ui.team_type_pickers(choices, "live", team_in=left, type_in=right)


@st.fragment(run_every=REFRESH_SECONDS)
def board(team: str | None, user_type: str | None, hidden: bool) -> None:
    ui.guarded(lambda: _draw(team, user_type, hidden), retry_every=None)


def _draw(team: str | None, user_type: str | None, hidden: bool) -> None:
    now = datetime.now(UTC)
    zone = ui.viewer_zone()
    available = set(data.settings().available_statuses)
    present, everyone, recent = data.gather(
        *data.presence_now(team, user_type, hidden),
        lambda: data.load(
            analytics.recently_left,
            RECENT,
            team=team,
            user_type=user_type,
            include_hidden=hidden,
            ttl=data.LIVE_TTL,
        ),
    )

    cols = st.columns(4)
    cols[0].metric("Present now", len(present))
    cols[1].metric("Available now", int(present["status"].isin(available).sum()))
    cols[2].metric("Recently active (< 5 min)", len(recent))
    cols[3].metric("Users known", len(everyone))

    if everyone.empty:
        ui.empty_state()
        return

    if len(present):
        for column, (key, label) in zip(
            st.columns(2), (("user_type", "type"), ("team", "team")), strict=True
        ):
            counts = analytics.count_by(present, key).rename(columns={key: label})
            counts[label] = counts[label].fillna("—")
            with column:
                st.markdown(f"**By {label}**")
                st.dataframe(
                    counts,
                    hide_index=True,
                    width="stretch",
                    height=min(35 * (len(counts) + 1) + 3, 215),
                )

    st.subheader(f"Present ({len(present)})")
    cards = []
    for row in present.head(MAX_CARDS).itertuples(index=False):
        text, color = ui.status_text(row.status, row.last_seen, False, now, zone)
        since = ui.format_clock(row.status_since, zone, now)
        cards.append(
            {
                "name": ui.display_name(row.user_id, row.user_name),
                "meta": " · ".join(
                    part for part in (text, f"since {since}" if since else "", row.team) if part
                ),
                "color": color,
                "pulse": color == GREEN,
                "title": f"{row.user_id}: {text}",
            }
        )
    st.markdown(
        ui.user_cards(cards, "Nobody is present right now.", kind="present"), unsafe_allow_html=True
    )
    if len(present) > MAX_CARDS:
        st.caption(f"… and {len(present) - MAX_CARDS:,} more; see Last seen for everyone.")

    st.subheader(f"Recently active ({len(recent)})")
    recent_cards = []
    for row in recent.head(MAX_CARDS).itertuples(index=False):
        text, _ = ui.status_text(row.status, row.last_seen, False, now, zone)
        recent_cards.append(
            {
                "name": ui.display_name(row.user_id, row.user_name),
                "meta": " · ".join(part for part in (text, row.team) if isinstance(part, str)),
                "color": AMBER,
                "title": f"{row.user_id}: last seen {ui.format_time(row.last_seen, zone)}",
            }
        )
    st.markdown(
        ui.user_cards(recent_cards, "Nobody left in the last 5 minutes.", kind="recent"),
        unsafe_allow_html=True,
    )
    st.caption(f"Updated {ui.format_time(now, zone)}")


board(team_filter, type_filter, hidden)
