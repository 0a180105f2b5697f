"""Availability: for team leads, who is missing now on each team's shift, how available
each team was over its last complete shift (in the team's own zone), or over any window."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import streamlit as st
from presence_core.dashboard import data, ui

from presence_core import analytics
from presence_core.shifts import format_work_days
from presence_core.status import AMBER, GRAY, GREEN

LAST_SHIFT = "Each team's last shift"
CUSTOM = "Custom window"
COUNTS = ("scheduled", "available", "away", "offline")
BELOW = "background-color: rgba(239, 68, 68, 0.16)"  # a team or agent under its target

st.title("Availability")
viewer = ui.viewer_zone()
hidden = ui.include_hidden()  # an administrator who asked for users who hide their times
choices = data.load(analytics.filter_choices)
settings = data.settings()
as_of = ui.as_of()  # ?as_of=…: the page as it was at that instant (tests, shared views)

with st.container(border=True):
    c1, c2, c3 = st.columns([1, 1, 2])
    team_filter, type_filter = ui.team_type_pickers(choices, "av", team_in=c1, type_in=c2)
    mode = c3.radio("Window", [LAST_SHIFT, CUSTOM], horizontal=True, key="av_mode")
    c8, c9 = st.columns([3, 1])
    known_statuses = sorted(set(choices["status"]) | set(settings.available_statuses) - {"offline"})
    statuses = c8.multiselect(
        "Statuses that count as available",
        [s for s in known_statuses if s != "offline"],
        default=list(settings.available_statuses),
        key="av_statuses",
    )
    default_target = c9.number_input(
        "Target % (teams without one)",
        min_value=1,
        max_value=100,
        value=None,
        key="av_target",
        help="Teams set their own with `presence teams import` (column target_pct).",
    )

if not statuses:
    st.warning("Choose at least one status that counts as available.")
    st.stop()
if not choices["user_id"] and not choices["team"]:
    ui.empty_state()
    st.stop()


def _shift_text(s) -> str:
    days = "" if s.work_days is None else f" {format_work_days(s.work_days)}"
    if s.whole_day and s.shift_start == time(0):
        return "whole day" + days
    return f"{s.shift_start:%H:%M}–{s.shift_end:%H:%M}{days}"


def _window_text(start, end, zone: ZoneInfo) -> str:
    """``Fri Dec 4 22:00 – Sat Dec 5 06:00 CET`` (one date when it ends the same day)."""
    a, b = start.astimezone(zone), end.astimezone(zone)
    first = f"{a:%a %b} {a.day} {a:%H:%M}"
    if a.date() == b.date():
        return f"{first}–{b:%H:%M} {b:%Z}"
    return f"{first} – {b:%a %b} {b.day} {b:%H:%M} {b:%Z}"


def _highlight(column: str):
    def style(row: pd.Series) -> list[str]:
        return [BELOW if row[column] else ""] * len(row)

    return style


def agent_columns(rows: pd.DataFrame) -> dict:
    """The per-agent tables' leading columns (who, their team, their availability),
    the same in the last-shift view and in a custom window."""
    return {
        "agent": [
            ui.display_name(u, n) for u, n in zip(rows["user_id"], rows["user_name"], strict=True)
        ],
        "user": rows["user_id"].astype(str).to_numpy(),
        "team": rows["team"].to_numpy(),
        "availability": rows["availability_pct"].astype(float).round(1).to_numpy(),
        "available": [ui.format_duration(x) for x in rows["available_seconds"]],
    }


def last_shift_view() -> None:
    """Who is missing on each team's current shift, and each team's last complete shift."""
    now = as_of or datetime.now(UTC)
    teams = None if team_filter is None else (team_filter,)
    # shifts change on whole minutes at most (the minute keeps the cache useful)
    minute = now.replace(second=0, microsecond=0)
    plans = data.load(analytics.team_shifts, viewer.key, minute, teams, ttl=data.TABLE_TTL)
    if not plans:
        ui.empty_state(
            "No user belongs to a team yet. Give users a team with `presence users import`, "
            "set each team's zone and shift with `presence teams import`, or choose "
            f"“{CUSTOM}” above."
        )
        return
    roster, last = data.gather(
        lambda: data.load(
            analytics.roster,
            as_of,  # None: the database's state now
            teams,
            type_filter,
            tuple(statuses),
            include_hidden=hidden,
            ttl=data.TABLE_TTL,
        ),
        lambda: data.load(
            analytics.last_shift_availability,
            tuple(plans),
            tuple(statuses),
            type_filter,
            include_hidden=hidden,
        ),
    )
    staffing = analytics.staffing(plans, roster, default_target)
    when = "now" if as_of is None else f"at {ui.format_time(as_of, viewer)}"
    by_team = {p.settings.team: p for p in plans}

    # --- who is missing --------------------------------------------------------
    st.subheader(f"Who is missing {when}")
    if team_filter is not None:
        row = staffing.iloc[0]
        plan = by_team[team_filter]
        m1, m2, m3, m4 = st.columns(4)
        pct = row.available_pct
        target = row.target_pct
        m1.metric(
            "Available",
            f"{row.available} of {row.scheduled}",
            delta=None
            if pd.isna(pct) or target is None or pd.isna(target) or not row.on_shift
            else f"{pct - target:+.0f} points vs the {target:g} % target",
        )
        m2.metric("Away", int(row.away))
        m3.metric("Offline", int(row.offline))
        zone = plan.settings.zone
        m4.metric(
            "Shift now" if row.on_shift else "Between shifts",
            _shift_text(plan.settings),
            help=f"In {plan.settings.time_zone}"
            + ("" if plan.configured else " (no settings: the display zone, the whole day)"),
        )
        if row.on_shift:
            st.caption(
                f"Current shift {_window_text(plan.current.start, plan.current.end, zone)}; "
                f"{'below' if row.below_target else 'at or above'} target."
                if target is not None and not pd.isna(target)
                else f"Current shift {_window_text(plan.current.start, plan.current.end, zone)}."
            )
    shown = pd.DataFrame(
        {
            "team": staffing["team"],
            "shift": [f"{_shift_text(p.settings)} {p.settings.time_zone}" for p in plans],
            "now": [
                f"on shift until {p.current.end.astimezone(p.settings.zone):%H:%M}"
                if p.current is not None
                else "between shifts"
                for p in plans
            ],
            "scheduled": staffing["scheduled"],
            "available": staffing["available"],
            "away": staffing["away"],
            "offline": staffing["offline"],
            "available %": staffing["available_pct"].astype(float).round(1),
            "target %": staffing["target_pct"].astype(float),
            "below target": staffing["below_target"],
        }
    )
    st.dataframe(
        shown.style.apply(_highlight("below target"), axis=1),
        hide_index=True,
        width="stretch",
        height=min(35 * (len(shown) + 1) + 3, 460),
        column_config={
            **{c: st.column_config.NumberColumn(c, width="small") for c in COUNTS},
            "available %": ui.percent_column("available %", 0),
            "target %": st.column_config.NumberColumn("target %", format="%.0f %%", width="small"),
            "below target": None,  # the row's colour says it
        },
    )
    st.caption("Red rows: on shift and below target.")
    on_shift = {p.settings.team for p in plans if p.current is not None}
    agents = roster[roster["team"].isin(on_shift)]
    order = {"away": 0, "offline": 1, "available": 2}
    agents = agents.assign(_order=agents["state"].map(order)).sort_values(
        ["_order", "since", "team", "user_id"], na_position="last"
    )
    st.markdown(f"**On shift {when}: missing first ({len(agents):,})**")
    if agents.empty:
        st.caption("No team is on shift at this moment.")
    else:
        colors = {"available": GREEN, "away": AMBER, "offline": GRAY}
        table = pd.DataFrame(
            {
                "": [ui.dot_image(colors[s]) for s in agents["state"]],
                "agent": [
                    ui.display_name(u, n)
                    for u, n in zip(agents["user_id"], agents["user_name"], strict=True)
                ],
                "team": agents["team"].to_numpy(),
                "state": agents["state"].to_numpy(),
                "status": agents["status"].to_numpy(),
                "since": [ui.format_clock(t, viewer, now) for t in agents["since"]],
                "for": [
                    "" if pd.isna(t) else ui.format_duration((now - t).total_seconds())
                    for t in agents["since"]
                ],
            }
        )
        st.dataframe(
            ui.capped(table, data.MAX_ROWS),
            hide_index=True,
            width="stretch",
            height=min(35 * (len(table) + 1) + 3, 420),
            column_config={"": st.column_config.ImageColumn("", width="small")},
        )
        st.caption(
            f"Scheduled = the team's agents; available = {', '.join(statuses)}; since = "
            f"when the status began (times in {viewer.key}). Blank for users who hide it."
        )

    # --- the last complete shift ----------------------------------------------------
    st.subheader("Last complete shift")
    if last.empty:
        ui.empty_state("No agents match these filters.")
        return
    targets = {r.team: r.target_pct for r in staffing.itertuples(index=False)}
    summary = []
    for plan in plans:
        rows = last[last["team"] == plan.settings.team]
        target = targets.get(plan.settings.team)
        target = None if target is None or pd.isna(target) else float(target)
        mean = float(rows["availability_pct"].mean()) if len(rows) else None
        summary.append(
            {
                "team": plan.settings.team,
                "shift": _window_text(plan.last.start, plan.last.end, plan.settings.zone),
                "settings": f"{_shift_text(plan.settings)} {plan.settings.time_zone}"
                + ("" if plan.configured else " (default)"),
                "agents": len(rows),
                "mean availability %": None if mean is None else round(mean, 1),
                "target %": target,
                "under target": None
                if target is None
                else int((rows["availability_pct"] < target).sum()),
                "below": target is not None and mean is not None and mean < target,
            }
        )
    teams_table = pd.DataFrame(summary)
    st.dataframe(
        teams_table.style.apply(_highlight("below"), axis=1),
        hide_index=True,
        width="stretch",
        height=min(35 * (len(teams_table) + 1) + 3, 460),
        column_config={
            "mean availability %": ui.percent_column("mean availability %"),
            "target %": st.column_config.NumberColumn("target %", format="%.0f %%"),
            "below": None,
        },
    )
    per_agent = last.sort_values(
        ["team", "availability_pct", "user_id"], ascending=[True, False, True]
    )
    agent_table = pd.DataFrame(
        {
            **agent_columns(per_agent),
            "shift": [ui.format_duration(x) for x in per_agent["shift_seconds"]],
        }
    )
    st.dataframe(
        ui.capped(agent_table, data.MAX_ROWS),
        hide_index=True,
        width="stretch",
        column_config={"availability": ui.percent_column("availability", width="medium")},
    )
    st.caption(
        f"Each team's last complete shift in its own zone (teams without settings: the "
        f"whole day in {viewer.key}); availability = time in {', '.join(statuses)} inside "
        f"it ÷ its length. Choose “{CUSTOM}” above for any other window."
    )


if mode == LAST_SHIFT:
    last_shift_view()
    st.stop()

# a chosen team's own zone and shift are where a custom window starts from
team_plans = (
    []
    if team_filter is None
    else data.load(
        analytics.team_shifts,
        viewer.key,
        datetime.now(UTC).replace(second=0, microsecond=0),
        (team_filter,),
        ttl=data.TABLE_TTL,
    )
)
own = team_plans[0].settings if team_plans else None
with st.container(border=True):
    c1, c2, c3 = st.columns(3)
    zones = list(ui.time_zones())
    if viewer.key not in zones:
        zones = sorted([*zones, viewer.key])
    first_zone = own.time_zone if own is not None and own.time_zone in zones else viewer.key
    tz = c3.selectbox("Time zone", zones, index=zones.index(first_zone), key="av_tz")
    today = datetime.now(UTC).astimezone(ZoneInfo(tz)).date()
    c4, c5, c6, c7 = st.columns([2, 1, 1, 1])
    start, end = ui.period_picker("av_days", today, days=1, label="Days", where=c4)
    whole = own is not None and own.whole_day and own.shift_start == time(0)
    whole_day = c7.checkbox("Whole day", value=whole, key="av_whole_day")
    shift_start = c5.time_input(
        "Shift starts",
        time(9, 0) if own is None or whole else own.shift_start,
        key="av_from",
        disabled=whole_day,
    )
    shift_end = c6.time_input(
        "Shift ends",
        time(17, 0) if own is None or whole else own.shift_end,
        key="av_to",
        disabled=whole_day,
    )
    limit = c1.number_input(
        "Away longer than (min)", min_value=1, max_value=24 * 60, value=15, key="av_limit"
    )

if whole_day:
    shift_start, shift_end = time(0), None
shift_text = "the whole day" if shift_end is None else f"{shift_start:%H:%M}–{shift_end:%H:%M}"
st.caption(f"{start} to {end}, shift {shift_text} in {tz}; available = {', '.join(statuses)}.")


def availability_agent_rows(
    engine, start, end, tz: str, shift_start, shift_end, statuses: tuple, **filters
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``analytics.agent_summary`` and its rows as the page shows them (durations and
    times as text in ``tz``). Read through ``data.load``, so the text is cached with
    the figures: formatting 5,000 agents' rows took 0.25 s of Python at every rerun
    (a toggle, a limit changed), more than the rest of a warm rerun's script."""
    per_user = analytics.agent_summary(
        engine, start, end, tz, shift_start, shift_end, statuses, **filters
    )
    status_columns = [c for c in per_user.columns if c.startswith("in ")]
    zone = ZoneInfo(tz)
    shown = pd.DataFrame(
        {
            **agent_columns(per_user),
            "online": [ui.format_duration(s) for s in per_user["online_seconds"]],
            **{c: [ui.format_duration(s) for s in per_user[c]] for c in status_columns},
            "first in": [ui.format_time(t, zone)[:16] for t in per_user["first_in"]],
            "last out": [ui.format_time(t, zone)[:16] for t in per_user["last_out"]],
            "sessions": per_user["sessions"].to_numpy(),
        }
    )
    return per_user, shown


# --- right now -----------------------------------------------------------------
now = datetime.now(UTC)
include_offline = st.toggle("Count offline agents as away", value=False, key="av_offline")
# the page's queries run at once; drawing waits for the slowest only
present, everyone, away, (per_user, shown) = data.gather(
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
        availability_agent_rows,
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

m1, m2, m3 = st.columns(3)
m1.metric("Agents", len(shown))
m2.metric("Mean availability", f"{per_user['availability_pct'].mean():.1f} %")
m3.metric("Available at some point", int((per_user["available_seconds"] > 0).sum()))
st.dataframe(
    ui.capped(shown, data.MAX_ROWS),
    hide_index=True,
    width="stretch",
    column_config={"availability": ui.percent_column("availability", width="medium")},
)
st.caption(
    f"Availability = time in {', '.join(statuses)} inside the shift ÷ the shift's length. "
    "Online and time in each status count the whole days; first in and last out are the "
    "earliest session start and latest session end over the period."
)
