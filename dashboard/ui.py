"""Drawing helpers shared by the pages: status dots, times in the viewer's zone,
empty states, the "database is down" notice and the optional access gate."""

from __future__ import annotations

import functools
import hmac
import html
import urllib.parse
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import streamlit as st

from presence_core import status as st_status
from presence_core.status import GRAY

NO_DATA_HINT = (
    "No presence data yet. Start the listener against a presence server "
    "(`presence serve` and `presence listen`), or run everything at once with `presence demo`."
)

STYLE = f"""
<style>
.pd-dot {{
  display: inline-block; width: 0.7rem; height: 0.7rem; border-radius: 50%;
  background: var(--pd-color, {GRAY}); vertical-align: middle; flex: none;
}}
.pd-pulse {{ animation: pd-pulse 2s ease-out infinite; }}
@keyframes pd-pulse {{
  0%   {{ box-shadow: 0 0 0 0 color-mix(in srgb, var(--pd-color) 65%, transparent); }}
  70%  {{ box-shadow: 0 0 0 0.45rem color-mix(in srgb, var(--pd-color) 0%, transparent); }}
  100% {{ box-shadow: 0 0 0 0 transparent; }}
}}
@media (prefers-reduced-motion: reduce) {{ .pd-pulse {{ animation: none; }} }}
.pd-list {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr));
  gap: 0.35rem 1rem; margin: 0.25rem 0 0.75rem 0; }}
.pd-user {{ display: flex; align-items: center; gap: 0.55rem; padding: 0.3rem 0.2rem;
  border-bottom: 1px solid rgba(128,128,128,0.15); min-width: 0; }}
.pd-user .pd-name {{ font-weight: 600; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }}
.pd-user .pd-meta {{ font-size: 0.8rem; opacity: 0.7; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }}
.pd-user > div {{ min-width: 0; }}
.pd-feed {{ display: flex; flex-direction: column; gap: 0.1rem; margin: 0.25rem 0 0.75rem 0; }}
.pd-feed .pd-user {{ padding: 0.2rem 0.2rem; }}
.pd-feed .pd-when {{ font-variant-numeric: tabular-nums; font-size: 0.8rem; opacity: 0.7;
  min-width: 3.2rem; flex: none; }}
</style>
"""


def inject_style() -> None:
    """Add the dashboard's CSS (dots, pulse, user lists) to the page."""
    st.markdown(STYLE, unsafe_allow_html=True)


# ---------------------------------------------------------------------------
# time


def viewer_zone(fallback: tzinfo | None = None) -> ZoneInfo:
    """The viewer's time zone: the browser's (``st.context.timezone``), else
    ``fallback``, else ``PRESENCE_TZ`` (default UTC)."""
    try:
        name = st.context.timezone
    except Exception:  # outside a browser session (bare mode)
        name = None
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    if isinstance(fallback, ZoneInfo):
        return fallback
    from presence_core.dashboard.data import settings

    return settings().tz


@functools.cache
def time_zones() -> tuple[str, ...]:
    """Every IANA zone name, sorted: read once per process (``available_timezones``
    walks the zone database's files, 20 ms, and a zone picker asks at every rerun)."""
    from zoneinfo import available_timezones

    return tuple(sorted(available_timezones()))


def format_time(moment: datetime | pd.Timestamp | None, zone: tzinfo) -> str:
    """``2026-11-27 18:04:09 CET`` in ``zone``; empty for a missing time."""
    if moment is None or pd.isna(moment):
        return ""
    if isinstance(moment, pd.Timestamp):
        moment = moment.to_pydatetime()
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def format_clock(moment: datetime | pd.Timestamp | None, zone: tzinfo, now: datetime) -> str:
    """``14:05`` when ``moment`` is today in ``zone``, else ``Nov 26 14:05``."""
    if moment is None or pd.isna(moment):
        return ""
    if isinstance(moment, pd.Timestamp):
        moment = moment.to_pydatetime()
    local = moment.astimezone(zone)
    if local.date() == now.astimezone(zone).date():
        return local.strftime("%H:%M")
    return local.strftime("%b %d %H:%M").replace(" 0", " ")


def format_duration(seconds: float | None) -> str:
    """``2h 05m``, ``12m``, ``45s``; ``3d 4h`` for long ones; empty for None."""
    if seconds is None or pd.isna(seconds):
        return ""
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


# ---------------------------------------------------------------------------
# status


def status_text(
    status: str | None,
    last_seen: datetime | pd.Timestamp | None,
    hidden: bool,
    now: datetime,
    zone: tzinfo,
) -> tuple[str, str]:
    """``(text, color)`` as the guide shows a user: a present user its status, others
    how long ago they were seen; ``hidden`` (gray) for a user who hides it."""
    if hidden:
        return "hidden", GRAY
    if last_seen is not None and pd.isna(last_seen):
        last_seen = None
    if isinstance(last_seen, pd.Timestamp):
        last_seen = last_seen.to_pydatetime()
    return st_status.display_status(status, last_seen, now=now, tz=zone)


def dot(color: str, pulse: bool = False, title: str = "") -> str:
    """HTML for a status dot; ``pulse`` animates it (a present, available user)."""
    classes = "pd-dot pd-pulse" if pulse else "pd-dot"
    label = f' title="{html.escape(title)}"' if title else ""
    return f'<span class="{classes}" style="--pd-color:{color}"{label}></span>'


@functools.cache
def dot_image(color: str) -> str:
    """A status dot as an SVG data URL, for ``st.column_config.ImageColumn`` cells
    (where HTML cannot go)."""
    svg = (
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24' width='24' height='24'>"
        f"<circle cx='12' cy='12' r='5' fill='{color}'/></svg>"
    )
    return "data:image/svg+xml;utf8," + urllib.parse.quote(svg)


def user_cards(rows: Iterable[dict], empty: str = "", kind: str = "users") -> str:
    """HTML for a grid of users (CSS class ``pd-<kind>``); each row: ``name, meta,
    color``, optionally ``pulse`` and ``title``."""
    items = [
        '<div class="pd-user">'
        + dot(row["color"], row.get("pulse", False), row.get("title", ""))
        + f'<div><div class="pd-name">{html.escape(str(row["name"]))}</div>'
        + f'<div class="pd-meta">{html.escape(str(row["meta"]))}</div></div></div>'
        for row in rows
    ]
    if not items:
        return f'<div class="pd-meta">{html.escape(empty)}</div>' if empty else ""
    return f'<div class="pd-list pd-{html.escape(kind)}">' + "".join(items) + "</div>"


def feed_list(rows: Iterable[dict], empty: str = "") -> str:
    """HTML for the Live feed, newest first (CSS class ``pd-feed``); each row:
    ``when, name, change, meta, color``, optionally ``title``."""
    items = [
        f'<div class="pd-user" data-change="{html.escape(str(row["change"]))}">'
        + f'<span class="pd-when">{html.escape(str(row["when"]))}</span>'
        + dot(row["color"], False, row.get("title", ""))
        + f'<div><div class="pd-name">{html.escape(str(row["name"]))} '
        + f"<span style='font-weight:400'>{html.escape(str(row['change']))}</span></div>"
        + f'<div class="pd-meta">{html.escape(str(row["meta"]))}</div></div></div>'
        for row in rows
    ]
    if not items:
        return f'<div class="pd-meta">{html.escape(empty)}</div>' if empty else ""
    return '<div class="pd-feed">' + "".join(items) + "</div>"


def as_of(name: str = "as_of") -> datetime | None:
    """The instant in the page's ``?as_of=`` query parameter (ISO-8601; naive = UTC),
    at most now: a page that chooses shifts then opens as it would have at that
    moment (a shared view, screenshots, tests at a given hour). None when absent;
    a warning (and None) when unreadable."""
    try:
        raw = st.query_params.get(name)
    except Exception:  # outside a browser session (bare mode)
        raw = None
    if not raw:
        return None
    text = str(raw).strip().replace("Z", "+00:00")
    moment = None
    for candidate in (text, text.replace(" ", "+")):  # a "+" arrives as a space
        try:
            moment = datetime.fromisoformat(candidate)
            break
        except ValueError:
            continue
    if moment is None:
        st.warning(f"Ignored ?{name}={raw}: not an ISO-8601 time such as 2026-12-06T01:00Z.")
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return min(moment.astimezone(UTC), datetime.now(UTC))


def display_name(user_id: object, user_name: object) -> str:
    """The user's name, or its id when it has none."""
    if user_name is None or (isinstance(user_name, float) and pd.isna(user_name)):
        return str(user_id)
    return str(user_name) or str(user_id)


# ---------------------------------------------------------------------------
# pickers shared by the pages

ALL_TEAMS = "All teams"
ALL_TYPES = "All types"


def date_range(picked: object, today: date) -> tuple[date, date]:
    """``st.date_input``'s value (one date, a range, or a half-picked range) as
    ``(start, end)``, earliest first; nothing picked yet means today."""
    if isinstance(picked, (tuple, list)):
        start, end = (picked[0], picked[-1]) if picked else (today, today)
    else:
        start = end = picked  # type: ignore[assignment]
    return min(start, end), max(start, end)


def period_picker(
    key: str,
    today: date,
    days: int = 7,
    label: str = "Period",
    where: Any = None,
    disabled: bool = False,
) -> tuple[date, date]:
    """A range of whole days ending today (the last ``days`` by default); returns
    ``(start, end)``, both included."""
    picked = (where or st).date_input(
        label,
        value=(today - timedelta(days=days - 1), today),
        max_value=today,
        key=key,
        format="YYYY-MM-DD",
        disabled=disabled,
    )
    return date_range(picked, today)


def team_type_pickers(
    choices: dict[str, list[str]],
    key: str,
    team_in: Any = None,
    type_in: Any = None,
    multi: bool = False,
) -> tuple[Any, Any]:
    """The team and user type filters (widget keys ``<key>_team``, ``<key>_type``),
    drawn in ``team_in`` / ``type_in``. Returns ``(team, user_type)``: one value
    each or None for all; with ``multi``, lists (None when nothing is chosen)."""
    if multi:
        teams = (team_in or st).multiselect("Team", choices["team"], key=f"{key}_team")
        types = (type_in or st).multiselect("Type", choices["user_type"], key=f"{key}_type")
        return teams or None, types or None
    team = (team_in or st).selectbox("Team", [ALL_TEAMS, *choices["team"]], key=f"{key}_team")
    kind = (type_in or st).selectbox("Type", [ALL_TYPES, *choices["user_type"]], key=f"{key}_type")
    return (None if team == ALL_TEAMS else team), (None if kind == ALL_TYPES else kind)


# ---------------------------------------------------------------------------
# page furniture


def empty_state(message: str = NO_DATA_HINT) -> None:
    """Explain what to do when there is nothing to show."""
    st.info(message, icon=":material/info:")


def percent_column(label: str, decimals: int = 1, **options: Any):
    """A 0-100 % column drawn as a bar, as every availability table shows it."""
    return st.column_config.ProgressColumn(
        label, format=f"%.{decimals}f %%", min_value=0, max_value=100, **options
    )


def capped(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    """``frame`` cut to ``limit`` rows, saying so on the page when it was cut."""
    if len(frame) > limit:
        st.caption(
            f"Showing the first {limit:,} of {len(frame):,} rows; narrow the filters "
            "or use Export for everything."
        )
        return frame.head(limit)
    return frame


def database_down(exc: BaseException, retry_every: float | None = 3.0) -> None:
    """Say the database is down and come back by itself once it answers again
    (every ``retry_every`` seconds; None where the caller already refreshes itself)."""
    st.error(
        f"**The database is not answering.** {exc}\n\n"
        "Check that PostgreSQL is running (`presence db status` for the embedded one) and "
        "that PRESENCE_DATABASE_URL is right. This page retries by itself every few seconds.",
        icon=":material/cloud_off:",
    )
    if retry_every is None:
        return

    @st.fragment(run_every=retry_every)
    def _retry() -> None:
        from presence_core.dashboard import data

        try:
            data.check()
        except data.DatabaseDown:
            st.caption(f"Last try: {datetime.now(UTC):%H:%M:%S} UTC — still down.")
            return
        data.clear()
        st.rerun(scope="app")

    _retry()


def guarded(draw: Callable[[], None], retry_every: float | None = 3.0) -> None:
    """Run ``draw``; if the database is down, show that instead and keep retrying."""
    from presence_core.dashboard import data

    try:
        draw()
    except data.DatabaseDown as exc:
        database_down(exc, retry_every)


# ---------------------------------------------------------------------------
# access


def _secrets_section(name: str) -> dict:
    try:
        section = st.secrets.get(name)
    except Exception:  # no secrets.toml at all
        return {}
    return dict(section) if section else {}


def require_access() -> None:
    """Stop the page unless the viewer may see it.

    Off by default. With ``[access] password`` in ``.streamlit/secrets.toml`` a
    password is asked (compared in constant time); with an ``[auth]`` section the
    viewer signs in through OIDC (``st.login``), optionally limited to
    ``[access] allowed_emails``; the accounts in ``[access] admins`` may always look
    and may show the users who hide their last seen (:func:`is_admin`).
    """
    access = _secrets_section("access")
    if _secrets_section("auth"):
        _require_login(access)
    password = access.get("password")
    if password:
        _require_password(str(password))


def _emails(access: dict, name: str) -> set[str]:
    return {str(e).strip().lower() for e in access.get(name, []) if str(e).strip()}


def _signed_in_email() -> str:
    try:
        if not st.user.get("is_logged_in"):
            return ""
        return str(st.user.get("email") or "").strip().lower()
    except Exception:  # no session (bare mode)
        return ""


def is_admin() -> bool:
    """Whether the viewer is an administrator: access control is configured with
    sign-in (an ``[auth]`` section) and the signed-in account's email is in
    ``[access] admins``. Never with the shared password alone: it names nobody."""
    if not _secrets_section("auth"):
        return False
    email = _signed_in_email()
    return bool(email) and email in _emails(_secrets_section("access"), "admins")


HIDDEN_TOGGLE = "pd_include_hidden"


def hidden_toggle() -> None:
    """For an administrator only: the sidebar's switch that shows the users who hide
    their last seen (their times, sessions and exports) on every page."""
    if is_admin():
        st.sidebar.toggle(
            "Show users who hide their last seen",
            value=False,
            key=HIDDEN_TOGGLE,
            help="Administrators only. Their times then appear on every page and in exports.",
        )


def include_hidden() -> bool:
    """What pages pass as ``include_hidden`` to ``presence_core.analytics``: true only
    for an administrator who turned :func:`hidden_toggle` on."""
    return is_admin() and bool(st.session_state.get(HIDDEN_TOGGLE, False))


def _require_login(access: dict) -> None:
    if not st.user.get("is_logged_in"):
        st.title("Presence analytics")
        st.write("Sign in to see the dashboard.")
        st.button("Sign in", on_click=st.login, type="primary")
        st.stop()
    allowed = _emails(access, "allowed_emails")
    email = _signed_in_email()
    if allowed and email not in allowed | _emails(access, "admins"):
        st.error(f"{email or 'This account'} may not see this dashboard.")
        st.button("Sign out", on_click=st.logout)
        st.stop()
    with st.sidebar:
        st.caption(f"Signed in as {email or st.user.get('name', '')}")
        st.button("Sign out", on_click=st.logout)


def _require_password(expected: str) -> None:
    if st.session_state.get("pd_access_granted"):
        return

    def check() -> None:
        given = st.session_state.get("pd_password", "")
        ok = hmac.compare_digest(given.encode(), expected.encode())
        st.session_state["pd_access_granted"] = ok
        st.session_state["pd_password_wrong"] = not ok
        st.session_state["pd_password"] = ""

    st.title("Presence analytics")
    st.text_input("Password", type="password", key="pd_password", on_change=check)
    if st.session_state.get("pd_password_wrong"):
        st.error("Wrong password.")
    st.stop()
