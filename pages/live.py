"""Live: how are we doing right now, refreshed every 2 seconds without reloading the page:
today's counts, the number present over the last hours, the latest changes, who is here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st
from presence_core.dashboard import data, ui

from presence_core import analytics
from presence_core.status import AMBER, GRAY, GREEN

REFRESH_SECONDS = 2
RECENT = timedelta(minutes=5)
MAX_CARDS = 500
CHART_HOURS = 6  # the chart's span; 5-minute points, so 72 of them
FEED_ROWS = 30  # the feed ships this many changes, whatever the number of users
FEED_COLORS = {
    analytics.feed.CAME: GREEN,
    analytics.feed.RETURNED: GREEN,
    analytics.feed.WENT_AWAY: AMBER,
    analytics.feed.CHANGED: AMBER,
    analytics.feed.LEFT: GRAY,
}

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
    present, everyone, recent, curve, feed = data.gather(
        *data.presence_now(team, user_type, hidden),
        lambda: data.load(
            analytics.recently_left,
            RECENT,
            team=team,
            user_type=user_type,
            include_hidden=hidden,
            ttl=data.LIVE_TTL,
        ),
        # an aggregate (hidden users count); its points are whole 5 minutes, so a few
        # seconds' cache is plenty: the last point is set from the live count below
        lambda: data.load(
            analytics.concurrency,
            now.replace(second=0, microsecond=0) - timedelta(hours=CHART_HOURS),
            None,
            "5 minutes",
            "UTC",
            user_type=user_type,
            team=team,
            ttl=data.TABLE_TTL,
        ),
        lambda: data.load(
            analytics.latest_changes,
            FEED_ROWS,
            team=team,
            user_type=user_type,
            available_statuses=tuple(available),
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

    chart_col, feed_col = st.columns([3, 2])
    with chart_col:
        _chart(curve, len(present), now, zone)
    with feed_col:
        _feed(feed, now, zone)

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


def _chart(curve, present_now: int, now: datetime, zone) -> None:
    """Users present at once over the last hours (each 5 minutes' peak), the last
    point being the count shown above. A Vega-Lite chart under a fixed key: Streamlit
    then sends each refresh's points to the same chart, which redraws in place."""
    st.markdown(f"**Present over the last {CHART_HOURS} hours**")
    times = [t.to_pydatetime().astimezone(zone) for t in curve["bucket"]] if len(curve) else []
    counts = [int(p) for p in curve["peak"].fillna(0)] if len(curve) else []
    times.append(now.astimezone(zone))
    counts.append(present_now)
    peak = max(counts)
    at = times[counts.index(peak)]
    points = pd.DataFrame(
        {
            # wall-clock times of the viewer's zone, without an offset: Vega-Lite shows
            # them as written, whatever zone the browser is in
            "time": [t.strftime("%Y-%m-%dT%H:%M:%S") for t in times],
            "present": counts,
        }
    )
    st.vega_lite_chart(
        points,
        {
            "height": 200,
            "mark": {
                "type": "area",
                "interpolate": "step-after",
                "color": GREEN,
                "opacity": 0.3,
                "line": {"color": GREEN},
            },
            "encoding": {
                "x": {
                    "field": "time",
                    "type": "temporal",
                    "title": None,
                    "axis": {"format": "%H:%M", "labelOverlap": True},
                },
                "y": {
                    "field": "present",
                    "type": "quantitative",
                    "title": None,
                    "axis": {"tickMinStep": 1, "format": "d"},
                    "scale": {"zero": True},
                },
                "tooltip": [
                    {"field": "time", "type": "temporal", "format": "%H:%M", "title": "time"},
                    {"field": "present", "type": "quantitative", "title": "present"},
                ],
            },
        },
        width="stretch",
        key="live_chart",
    )
    st.caption(
        f"Now {present_now} present; peak {peak} at {at:%H:%M} in the last {CHART_HOURS} h "
        f"(times in {zone.key})."
    )


def _feed(feed, now: datetime, zone) -> None:
    """The latest changes, newest first, for the page's team and type filters."""
    st.markdown("**Latest changes**")
    rows = [
        {
            "when": ui.format_clock(r.occurred_at, zone, now),
            "name": ui.display_name(r.user_id, r.user_name),
            "change": r.change,
            "meta": " · ".join(
                part
                for part in (
                    r.status if r.change != analytics.feed.LEFT else "",
                    r.team if isinstance(r.team, str) else "",
                    "inferred" if r.inferred else "",
                )
                if part
            ),
            "color": FEED_COLORS.get(r.change, AMBER),
            "title": f"{r.user_id}: {r.previous if isinstance(r.previous, str) else 'new'}"
            f" → {r.status}",
        }
        for r in feed.itertuples(index=False)
    ]
    with st.container(height=260, border=False):
        st.markdown(ui.feed_list(rows, "No changes in the last 12 hours."), unsafe_allow_html=True)


board(team_filter, type_filter, hidden)
