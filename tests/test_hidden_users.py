"""Hidden means hidden (issue 12, point 6): a user with ``hide_last_seen`` has no
individual times on any page, in any read of presence_core.analytics or in any
export, unless someone allowed to asks: the CLI's ``--include-hidden``, or on the
dashboard an administrator (``[access] admins`` with sign-in configured) who turns
the sidebar's switch on. Aggregates (counts, concurrency) still count them.

Every time in the data is placed at a minute that belongs to one user only, so
"this user's HH:MM appears nowhere" is an exact test, whatever the clock says."""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import UTC, datetime, time, timedelta

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import streamlit as st
from sqlalchemy import update
from streamlit.testing.v1 import AppTest

from presence_core import analytics, export
from presence_core.database import tables
from presence_core.database.storage import Transition, write_batch
from tests.test_dashboard_pages import APP
from tests.test_export import presence

HIDDEN = {"hid-77": "Hattie Hidden", "hid-88": "Hugo Hush"}
ADMIN = "boss@example.com"
AUTH = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "x" * 32,
    "client_id": "presence-dashboard",
    "client_secret": "secret",
    "server_metadata_url": "https://accounts.example.com/.well-known/openid-configuration",
}


@pytest.fixture
def scene(engine, monkeypatch, database_url, tmp_path):
    """Two visible users and two hidden ones, every time on a minute of its own
    (visible users on :05, :25, :35; hidden ones on :17 to :22, :43, :47, :49, :51
    and a few minutes ago, never :00, the charts' hourly buckets). Returns the
    hidden users' times."""
    monkeypatch.setenv("PRESENCE_DATABASE_URL", database_url.render_as_string(hide_password=False))
    monkeypatch.setenv("PRESENCE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PRESENCE_TZ", "UTC")
    st.cache_data.clear()
    st.cache_resource.clear()
    now = datetime.now(UTC)
    base = now.replace(minute=0, second=0, microsecond=0)
    yesterday = base - timedelta(days=1, hours=3)
    s13 = timedelta(seconds=13)

    def at(anchor: datetime, minutes: int) -> datetime:
        return anchor + timedelta(minutes=minutes) + s13

    hattie = [
        # yesterday: a flapping start, then a session closed
        ("online", at(yesterday, 17)),
        ("away", at(yesterday, 18)),
        ("online", at(yesterday, 19)),
        ("away", at(yesterday, 20)),
        ("online", at(yesterday, 21)),
        ("away", at(yesterday, 22)),
        ("offline", at(yesterday, 109)),  # 1 h 49 m later
        # today: online, away, online again (present now)
        ("online", at(base - timedelta(hours=4), 17)),
        ("away", at(base - timedelta(hours=3), 43)),
        ("online", at(base - timedelta(hours=1), 47)),
    ]
    # Hugo left a few minutes ago (recently active), on a minute no one else uses and
    # that is no chart's bucket (:00): among three neighbouring minutes one is free
    left = next(
        t for t in (now - timedelta(minutes=m) for m in (2, 3, 4)) if t.minute not in (0, 5, 25, 35)
    )
    hugo = [("online", at(base - timedelta(hours=2), 51)), ("offline", left)]
    visible = [
        ("v1", "Vera Visible", "online", base - timedelta(hours=3, minutes=-5)),
        ("v2", "Walt Visible", "online", base - timedelta(hours=2, minutes=-25)),
        ("v2", "Walt Visible", "offline", base - timedelta(hours=1, minutes=-35)),
    ]
    names = {"team": "support", "user_type": "agent"}
    rows = [
        *(Transition("hid-77", s, t, t, user_name=HIDDEN["hid-77"], **names) for s, t in hattie),
        *(Transition("hid-88", s, t, t, user_name=HIDDEN["hid-88"], **names) for s, t in hugo),
        *(Transition(u, s, t, t, user_name=n, **names) for u, n, s, t in visible),
    ]
    write_batch(engine, rows)
    with engine.begin() as conn:
        conn.execute(
            update(tables.users)
            .where(tables.users.c.user_id.in_(list(HIDDEN)))
            .values(hide_last_seen=True)
        )
    yield [t for _, t in hattie + hugo]
    st.cache_data.clear()
    st.cache_resource.clear()


def clocks(times: list[datetime]) -> set[str]:
    """Every hidden time as HH:MM: a part of every way a page or a file writes a time
    (ISO-8601, ``2026-05-04 09:17:13 UTC``, ``09:17``, ``May 4 09:17``)."""
    return {t.astimezone(UTC).strftime("%H:%M") for t in times}


def leaks(text: str, times: list[datetime], names: bool = True) -> list[str]:
    found = [c for c in clocks(times) if c in text]
    if names:
        found += [n for n in (*HIDDEN, *HIDDEN.values()) if n in text]
    return found


# ---------------------------------------------------------------------------
# the dashboard

PAGES = ("live", "last_seen", "activity", "availability", "export", "health")


def _plotly_array(value: object) -> list:
    """A plotly JSON array as values: a list, or numpy's bytes in base64 (``bdata``,
    plotly.py's encoding of numpy arrays)."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return value if isinstance(value, list) else [value]


def _wall(ms: object) -> str:
    """A number on a plotly date axis (milliseconds of a wall-clock time) as that time."""
    return (datetime(1970, 1, 1) + timedelta(milliseconds=float(ms))).isoformat(sep=" ")


def plotly_text(spec: str) -> str:
    """What a plotly chart tells the viewer, as text: every trace's arrays decoded (a
    list, or base64 typed arrays), and the numbers on a date axis turned back into
    the times they draw (wall-clock times of the page's zone, UTC in these tests):
    positions, and a bar's base and end (``base`` + length). So a time is found
    whether a page sends it as text, as numbers or as bytes."""
    figure = json.loads(spec)
    layout = figure.get("layout", {})
    parts = []
    for trace in figure.get("data", []):
        arrays = {
            key: _plotly_array(value)
            for key, value in trace.items()
            if isinstance(value, list) or (isinstance(value, dict) and "bdata" in value)
        }
        parts.append(json.dumps(arrays, default=str))
        for letter in ("x", "y"):
            axis = letter + "axis" + trace.get(letter + "axis", letter)[1:]
            if layout.get(axis, {}).get("type") != "date":
                continue
            positions = [v for v in arrays.get(letter, []) if isinstance(v, int | float)]
            horizontal = trace.get("orientation") == "h"
            if trace.get("type") == "bar" and "base" in arrays and horizontal == (letter == "x"):
                # a bar from its base for a length: the times are its two ends (a
                # length read as a time would be a clock that means nothing)
                bases = arrays["base"]
                parts += [_wall(b) for b in bases]
                parts += [_wall(b + v) for b, v in zip(bases, positions, strict=True)]
            else:
                parts += [_wall(v) for v in positions]
    return "\n".join(parts)


def page_text(at: AppTest, frames_only: bool = False, charts: bool = True) -> str:
    """Everything a page sent to the browser: every element's message (texts,
    options, chart specs), every table's cells, and what each plotly chart draws
    (its arrays decoded, times on date axes as times: :func:`plotly_text`)."""
    parts = []
    for node in at._tree:
        if node.type == "arrow_data_frame":
            parts.append(node.value.to_csv())
        elif node.type in ("plotly_chart", "vega_lite_chart") and not charts:
            continue
        elif not frames_only and getattr(node, "proto", None) is not None:
            parts.append(str(node.proto))
            if node.type == "plotly_chart":
                parts.append(plotly_text(node.proto.spec))
    return "\n".join(parts)


def open_app(admin: str | None = None, asks: bool = False, email: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    if admin is not None:
        at.secrets["auth"] = AUTH
        at.secrets["access"] = {"admins": [admin]}
        at.user = {"is_logged_in": True, "email": email or admin, "name": "Someone"}
    at.run()
    assert not at.exception, at.exception
    if asks:
        if admin is not None and (email or admin) == admin:
            at.toggle(key="pd_include_hidden").set_value(True).run()
        else:  # not offered: force the state as a crafted request would
            at.session_state["pd_include_hidden"] = True
            at.run()
        assert not at.exception, at.exception
    return at


shift_view: dict[bool, str] = {}  # Availability's default view, as last visited


def visit(at: AppTest, page: str, revealed: bool = False) -> AppTest:
    at.switch_page(f"../pages/{page}.py").run()
    assert not at.exception, (page, at.exception)
    if page == "activity":
        users = at.selectbox(key="act_user")  # options as shown: "name (id)"
        offered = " ".join(users.options)
        assert revealed == ("hid-77" in offered) == ("Hattie Hidden" in offered)
        users.select("hid-77" if revealed else "v1").run()
    if page == "availability":
        # the default view (each team's last shift, who is missing) first, then a window
        assert at.radio(key="av_mode").value == "Each team's last shift"
        shift_view[revealed] = page_text(at)
        at.radio(key="av_mode").set_value("Custom window").run()
        today = datetime.now(UTC).date()
        at.date_input(key="av_days").set_value((today - timedelta(days=2), today))
        at.checkbox(key="av_whole_day").check().run()
    assert not at.exception, (page, at.exception)
    return at


@pytest.mark.parametrize(
    "viewer",
    ["anyone", "password", "admin without asking", "signed-in non-admin who forces it"],
)
def test_no_page_shows_a_hidden_users_times(scene, viewer):
    if viewer == "password":
        at = AppTest.from_file(str(APP), default_timeout=60)
        at.secrets["access"] = {"password": "pw", "admins": [ADMIN]}
        at.run()
        at.text_input(key="pd_password").input("pw").run()
        at.session_state["pd_include_hidden"] = True  # no identity: never an admin
        at.run()
    elif viewer == "admin without asking":
        at = open_app(admin=ADMIN)
        assert at.toggle(key="pd_include_hidden").value is False
    elif viewer == "signed-in non-admin who forces it":
        at = open_app(admin=ADMIN, asks=True, email="clerk@example.com")
        assert not at.toggle  # no switch offered
    else:
        at = open_app()
        assert not at.toggle
    assert not at.exception, at.exception
    for page in PAGES:
        visit(at, page)
        # no hidden user's time anywhere on the page (Health's events-per-minute chart
        # has every minute of the last hour on its axis, Live's chart every 5 minutes
        # of the last 6 hours: aggregates, left aside)
        text = page_text(at, charts=page not in ("health", "live"))
        assert not leaks(text, scene, names=False), page
        # and no hidden user in any table, except Last seen's row that says "hidden"
        tables_text = page_text(at, frames_only=True)
        if page == "last_seen":
            shown = at.dataframe[0].value.set_index("User")
            assert set(shown.loc[list(HIDDEN), "Last seen"]) == {"hidden"}
            assert set(shown.loc[list(HIDDEN), "Exact time (UTC)"]) == {"hidden"}
        else:
            assert not leaks(tables_text, scene), page
        if page in ("activity", "export"):  # no hidden user to pick, nothing of theirs
            assert not leaks(page_text(at), scene), page
        if page == "export":
            assert "--include-hidden" not in at.code[0].value
        if page == "live":  # present users are counted; Hattie is one of them
            assert {m.label: m.value for m in at.metric}["Present now"] == "2"
            # the feed of changes: individual times, so no hidden user at all
            feed = "\n".join(m.value for m in at.markdown if 'class="pd-feed"' in m.value)
            assert "Walt Visible" in feed and not leaks(feed, scene), feed
            chart = "\n".join(str(n.proto) for n in at._tree if n.type == "vega_lite_chart")
            assert chart and not any(n in chart for n in (*HIDDEN, *HIDDEN.values()))
        if page == "availability":  # who is missing lists Hattie without her times
            assert not leaks(shift_view[False], scene, names=False)


def test_an_admin_who_asks_sees_them(scene):
    at = open_app(admin=ADMIN, asks=True)
    seen = {}
    for page in PAGES:
        visit(at, page, revealed=True)
        seen[page] = leaks(page_text(at), scene)
    hattie_today = scene[7:10]
    assert clocks(hattie_today) & set(seen["activity"])  # her timeline
    assert "hid-77" in seen["activity"]
    shown = visit(at, "last_seen", revealed=True).dataframe[0].value.set_index("User")
    assert shown.loc["hid-88", "Last seen"] in ("2m ago", "3m ago", "4m ago", "5m ago")
    assert shown.loc["hid-88", "Exact time (UTC)"] != "hidden"
    visit(at, "live", revealed=True)
    feed = "\n".join(m.value for m in at.markdown if 'class="pd-feed"' in m.value)
    assert "Hugo Hush" in feed and "Hattie Hidden" in feed
    visit(at, "availability", revealed=True)
    assert "Hattie Hidden" in shift_view[True]
    assert clocks(scene[7:10]) & set(leaks(shift_view[True], scene))  # her "since"
    agents = at.dataframe[-1].value.set_index("user")
    assert agents.loc["hid-77", "first in"] == scene[0].strftime("%Y-%m-%d %H:%M")
    visit(at, "export", revealed=True)
    assert "--include-hidden" in at.code[0].value
    # the switch off again: hidden again
    at.toggle(key="pd_include_hidden").set_value(False).run()
    assert not leaks(page_text(visit(at, "activity")), scene)


# ---------------------------------------------------------------------------
# presence_core.analytics: every per-user read


def per_user_reads(engine, include_hidden: bool) -> dict[str, object]:
    today = datetime.now(UTC).date()
    lo, hi = today - timedelta(days=2), today
    kw = {"include_hidden": True} if include_hidden else {}  # the defaults must hide
    return {
        "sessions": analytics.sessions(engine, lo, hi, **kw),
        "time_in_status": analytics.time_in_status(engine, lo, hi, **kw),
        "online_seconds": analytics.online_seconds(engine, lo, hi, **kw),
        "online_total": analytics.online_seconds(engine, lo, hi, per_day=False, **kw),
        "availability": analytics.availability(engine, lo, hi, **kw),
        "first_in_last_out": analytics.first_in_last_out(engine, lo, hi, **kw),
        "daily_summary": analytics.daily_summary(engine, lo, hi, **kw),
        "flapping": analytics.flapping_users(engine, lo, hi, **kw),
        "timeline": analytics.user_timeline(engine, "hid-77", lo, hi, **kw),
        "agents": analytics.agent_summary(engine, lo, hi, "UTC", time(0), None, **kw),
        "away": analytics.away_users(engine, ["online"], timedelta(0), include_offline=True, **kw),
        "recent": analytics.recently_left(engine, timedelta(minutes=5), **kw),
        "present": analytics.current_presence(engine, **kw),
        "last_seen": analytics.last_seen_table(engine, **kw),
        "choices": analytics.filter_choices(engine, **kw)["user_id"],
        "names": analytics.user_names(engine, **kw),
        "feed": analytics.latest_changes(engine, 100, timedelta(days=2), **kw),
        "last_shift": analytics.last_shift_availability(
            engine, analytics.team_shifts(engine, "UTC", datetime.now(UTC)), **kw
        ),
        "roster": analytics.roster(engine, **kw),
    }


def as_text(value: object) -> str:
    if isinstance(value, pd.DataFrame):
        return value.to_csv(date_format="%Y-%m-%dT%H:%M:%S")
    return json.dumps(value, default=str)


def test_every_per_user_read_leaves_them_out_unless_asked(scene, engine):
    for name, value in per_user_reads(engine, include_hidden=False).items():
        if name == "roster":  # scheduled agents: listed and counted, times blank
            hidden = value[value["user_id"].isin(list(HIDDEN))]
            assert len(hidden) == 2 and hidden["since"].isna().all()
            assert not leaks(as_text(value), scene, names=False), name
        elif name in ("present", "last_seen"):  # listed with their status, times blank
            hidden = value[value["user_id"].isin(list(HIDDEN))]
            assert hidden["last_seen"].isna().all() and hidden["status_since"].isna().all()
            assert not leaks(as_text(value), scene, names=False), name
        else:
            assert not leaks(as_text(value), scene), name
    revealed = per_user_reads(engine, include_hidden=True)
    for name, value in revealed.items():
        if name != "timeline":  # one user's rows: no id column
            assert "hid-77" in as_text(value) or "hid-88" in as_text(value), name
    assert revealed["flapping"]["user_id"].tolist() == ["hid-77"]
    assert revealed["recent"]["user_id"].tolist() == ["hid-88"]
    assert set(revealed["timeline"]["start"]) >= {pd.Timestamp(t) for t in scene[7:10]}


def aggregates(engine, end: datetime) -> list[pd.DataFrame]:
    start = end.date() - timedelta(days=2)
    return [
        analytics.presence_counts(engine, "status"),
        analytics.daily_active_users(engine, start, end),
        analytics.concurrency(engine, start, end, "hour", rollup=False),
        analytics.weekday_hour_heatmap(engine, start, end),
        analytics.session_length_distribution(engine, start, end),
    ]


def test_aggregates_still_count_them(scene, engine):
    end = datetime.now(UTC)  # one end for both reads: figures up to "now" would move
    counted = aggregates(engine, end)
    # Vera and Hattie are present now
    assert dict(zip(counted[0].status, counted[0].present, strict=True)) == {"online": 2}
    # the same figures as when nobody hides: hiding changes no aggregate
    with engine.begin() as conn:
        conn.execute(update(tables.users).values(hide_last_seen=False))
    for hidden, open_ in zip(counted, aggregates(engine, end), strict=True):
        pd.testing.assert_frame_equal(hidden, open_)


# ---------------------------------------------------------------------------
# exports: every dataset, every format, the CLI


def exported(engine, dataset: str, fmt: str, include_hidden: bool, tmp_path) -> str:
    filters = export.ExportFilters(include_hidden=include_hidden, tz="UTC")
    data = b"".join(export.stream_export(engine, dataset, fmt, filters))
    if fmt != "parquet":
        return data.decode()
    out = tmp_path / f"{dataset}.parquet"
    out.write_bytes(data)
    return pq.read_table(out).to_pandas().to_csv(date_format="%Y-%m-%dT%H:%M:%S")


@pytest.mark.parametrize("dataset", export.DATASETS)
def test_exports_leave_them_out_unless_asked(scene, engine, dataset, tmp_path):
    for fmt in export.FORMATS:
        assert not leaks(exported(engine, dataset, fmt, False, tmp_path), scene), fmt
        assert "hid-77" in exported(engine, dataset, fmt, True, tmp_path), fmt


def test_cli_needs_include_hidden(scene, cli_env):
    start = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()
    for dataset in export.DATASETS:
        args = ("export", "--dataset", dataset, "--output", "-", "--from", start, "--tz", "UTC")
        plain = presence(cli_env, *args)
        assert plain.returncode == 0, plain.stderr
        assert not leaks(plain.stdout.decode(), scene), dataset
        rows = list(csv.DictReader(io.StringIO(plain.stdout.decode(), newline="")))
        assert rows and {r["user_id"] for r in rows} <= {"v1", "v2"}
        asked = presence(cli_env, *args, "--include-hidden")
        assert asked.returncode == 0, asked.stderr
        assert "hid-77" in asked.stdout.decode() and "Hattie Hidden" in asked.stdout.decode()
