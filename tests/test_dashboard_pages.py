"""Every dashboard page, run by Streamlit's AppTest against a real PostgreSQL with
known data: the tests check what is shown (metrics, table cells, the guide's texts)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import streamlit as st
from sqlalchemy import update
from streamlit.testing.v1 import AppTest

from presence_core import analytics
from presence_core.database import tables
from presence_core.database.storage import Sighting, Transition, write_batch
from presence_core.status import AMBER, GRAY, GREEN
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"


@pytest.fixture
def dashboard_env(monkeypatch: pytest.MonkeyPatch, database_url, tmp_path):
    """Point the dashboard at this test's database, with empty Streamlit caches."""
    monkeypatch.setenv("PRESENCE_DATABASE_URL", database_url.render_as_string(hide_password=False))
    monkeypatch.setenv("PRESENCE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PRESENCE_TZ", "UTC")
    monkeypatch.setenv("PRESENCE_SERVER_URL", "http://127.0.0.1:4999")
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def _t(user, status, at, **names) -> Transition:
    return Transition(user, status, at, at, source="test", **names)


@pytest.fixture
def known_data(engine, dashboard_env):
    """Six users in known states (times relative to now)."""
    now = datetime.now(UTC)
    support = {"user_type": "agent", "team": "support"}
    sales = {"user_type": "agent", "team": "sales"}
    write_batch(
        engine,
        [
            # online for an hour, last seen an hour ago: must show "online", never "1h ago"
            _t("1", "online", now - timedelta(hours=1), user_name="Alice", **support),
            # present but away for ten minutes
            _t("2", "online", now - timedelta(hours=2), user_name="Bob", **support),
            _t("2", "away", now - timedelta(minutes=10), user_name="Bob", **support),
            # left 5½ minutes ago: "5m ago"
            _t("3", "online", now - timedelta(hours=3), user_name="Carol", **sales),
            _t("3", "offline", now - timedelta(minutes=5, seconds=30), user_name="Carol", **sales),
            # left 3 hours ago: "3h ago"
            _t("4", "online", now - timedelta(hours=5), user_name="Dave", **sales),
            _t("4", "offline", now - timedelta(hours=3, minutes=1), user_name="Dave", **sales),
            # hides their last seen
            _t("5", "online", now - timedelta(days=2, hours=1), user_name="Eve", **sales),
            _t("5", "offline", now - timedelta(days=2), user_name="Eve", **sales),
            # left 2 minutes ago: recently active
            _t("6", "online", now - timedelta(minutes=30), user_name="Frank", user_type="manager"),
            _t("6", "offline", now - timedelta(minutes=2), user_name="Frank", user_type="manager"),
        ],
        [Sighting("1", now - timedelta(hours=1))],
    )
    with engine.begin() as conn:
        conn.execute(
            update(tables.users).where(tables.users.c.user_id == "5").values(hide_last_seen=True)
        )
    return now


def open_page(page: str | None = None) -> AppTest:
    """Run the app (Live), then switch to ``pages/<page>.py``; fail on any exception."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(f"../pages/{page}.py").run()
        assert not at.exception, at.exception
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def markdown(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def table(at: AppTest, index: int = 0) -> pd.DataFrame:
    return at.dataframe[index].value


# ---------------------------------------------------------------------------
# Live


def test_live_shows_counts_and_present_users(known_data):
    at = open_page()
    assert at.title[0].value == "Live"
    assert metrics(at) == {
        "Present now": "2",
        "Available now": "1",
        "Recently active (< 5 min)": "1",
        "Users known": "6",
    }
    text = markdown(at)
    # Alice is online (green, pulsing) and Bob away (amber); Frank left 2 minutes ago
    assert "Alice" in text and "online" in text and "pd-pulse" in text
    assert "Bob" in text and "away" in text
    assert "Frank" in text and "2m ago" in text
    assert "1h ago" not in text
    cards = "\n".join(m.value for m in at.markdown if "pd-present" in m.value)
    assert "Carol" not in cards and "Dave" not in cards
    by_type = table(at, 0)
    assert dict(zip(by_type["type"], by_type["present"], strict=True)) == {"agent": 2}


def test_live_filters_by_team(known_data):
    at = open_page()
    at.selectbox(key="live_team").select("sales").run()
    assert not at.exception
    assert metrics(at)["Present now"] == "0"
    assert "Nobody is present right now." in markdown(at)


def test_live_empty_database_says_what_to_do(dashboard_env):
    at = open_page()
    assert metrics(at)["Present now"] == "0"
    assert any("presence demo" in info.value for info in at.info)


# ---------------------------------------------------------------------------
# Last seen


def test_last_seen_shows_the_guides_texts(known_data):
    at = open_page("last_seen")
    shown = table(at)
    text = dict(zip(shown["User"], shown["Last seen"], strict=True))
    assert text == {
        "1": "online",
        "2": "away",
        "3": "5m ago",
        "4": "3h ago",
        "5": "hidden",
        "6": "2m ago",
    }
    # the dots are the guide's colors
    dots = dict(zip(shown["User"], shown[" "], strict=True))
    for user, color in {"1": GREEN, "2": AMBER, "6": AMBER, "4": GRAY, "5": GRAY}.items():
        assert dots[user].startswith("data:image/svg+xml")
        assert quote(color) in dots[user], (user, dots[user])
    exact = shown.set_index("User")["Exact time (UTC)"]
    assert exact["5"] == "hidden"
    expected = (known_data - timedelta(hours=3, minutes=1)).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert exact["4"] == expected


def test_last_seen_search_and_filters(known_data):
    at = open_page("last_seen")
    at.text_input(key="ls_search").input("car").run()
    assert list(table(at)["Name"]) == ["Carol"]
    at.text_input(key="ls_search").input("").run()
    at.multiselect(key="ls_team").select("support").run()
    assert sorted(table(at)["User"]) == ["1", "2"]
    at.multiselect(key="ls_status").select("away").run()
    assert list(table(at)["User"]) == ["2"]


def test_last_seen_sorts_by_name(known_data):
    at = open_page("last_seen")
    at.selectbox(key="ls_sort").select("Name").run()
    assert list(table(at)["Name"]) == ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank"]


def test_last_seen_uses_presence_tz(known_data, monkeypatch):
    monkeypatch.setenv("PRESENCE_TZ", "Asia/Tokyo")
    at = open_page("last_seen")
    shown = table(at).set_index("User")
    expected = (known_data - timedelta(hours=3, minutes=1)).astimezone(
        __import__("zoneinfo").ZoneInfo("Asia/Tokyo")
    )
    assert shown.loc["4", "Exact time (Asia/Tokyo)"] == expected.strftime("%Y-%m-%d %H:%M:%S JST")


# ---------------------------------------------------------------------------
# Health


def test_health_without_listener(known_data, database_url):
    at = open_page("health")
    assert metrics(at)["Listener"] == "down"
    assert any("No listener has ever run" in w.value for w in at.warning)
    counts = table(at, -1)
    assert dict(zip(counts["table"], counts["rows"], strict=True))["presence_users"] == 6
    assert dict(zip(counts["table"], counts["rows"], strict=True))["presence_transitions"] == 11
    text = markdown(at)
    assert "http://127.0.0.1:4999" in text
    assert database_url.render_as_string(hide_password=True) in text


def test_health_with_live_listener(known_data, engine):
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            tables.listeners.insert().values(
                listener="l1",
                server_url="http://x",
                started_at=now - timedelta(minutes=7),
                heartbeat_at=now,
                connected=True,
                last_event_at=now - timedelta(seconds=90),
                events_received=10,
                transitions_written=8,
            )
        )
    at = open_page("health")
    assert metrics(at)["Listener"] == "alive"
    assert any("Listener alive" in s.value for s in at.success)
    assert metrics(at)["Last event"] == "1m ago"


# ---------------------------------------------------------------------------
# Activity


def test_activity_shows_peak_and_a_users_sessions(known_data):
    at = open_page("activity")
    # between 30 and 5½ minutes ago Alice, Bob, Carol and Frank were present at once
    assert metrics(at)["Peak present"] == "4"
    assert len(at.get("plotly_chart")) == 4
    at.selectbox(key="act_user").select("3").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 5
    assert any("1 session(s), 2h 54m present in total." in c.value for c in at.caption)
    # Bob's session is split where he went away: two colours on his timeline
    at.selectbox(key="act_user").select("2").run()
    timeline = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert sorted(trace["name"] for trace in timeline["data"]) == ["away", "online"]


def _plotly_array(value) -> list[float]:
    """A plotly JSON array: a list, or numpy's bytes in base64 (``bdata``)."""
    if isinstance(value, dict):
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)


def test_activity_curve_is_drawn_in_the_viewers_wall_clock_time(known_data, engine, monkeypatch):
    """The curve's times travel as numbers (milliseconds of the wall-clock time in the
    viewer's zone, which a plotly date axis shows as written), one per bucket, with the
    same peaks as analytics.concurrency; the bucket choice redraws it per day."""
    monkeypatch.setenv("PRESENCE_TZ", "Asia/Tokyo")  # no browser: the zone shown
    zone = ZoneInfo("Asia/Tokyo")
    at = open_page("activity")
    curve = json.loads(at.get("plotly_chart")[0].proto.spec)
    # the period the page shows (its last 7 days in Tokyo), read from the page itself
    period = next(c.value for c in at.caption if " to " in c.value and "Asia/Tokyo" in c.value)
    first_day, last_day = (date.fromisoformat(d) for d in period.split(" (")[0].split(" to "))
    expected = analytics.concurrency(engine, first_day, last_day, "hour", "Asia/Tokyo")
    walls = [t.astimezone(zone).replace(tzinfo=None) for t in expected["bucket"].dt.to_pydatetime()]
    peak = curve["data"][0]
    assert peak["name"] == "peak" and curve["layout"]["xaxis"]["type"] == "date"
    assert _plotly_array(peak["x"]) == [
        (w - datetime(1970, 1, 1)).total_seconds() * 1000 for w in walls
    ]
    assert _plotly_array(peak["y"]) == [float(p) for p in expected["peak"]]

    at.selectbox(key="act_bucket").select("day").run()
    assert not at.exception
    days = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    first = datetime.combine(first_day, time(0))
    assert _plotly_array(days["x"]) == [
        (first + timedelta(days=k) - datetime(1970, 1, 1)).total_seconds() * 1000 for k in range(7)
    ]
    assert metrics(at)["Peak present"] == "4"


def test_activity_empty_period_explains(dashboard_env):
    at = open_page("activity")
    assert any("Nobody was present in this period" in info.value for info in at.info)


# ---------------------------------------------------------------------------
# Availability


def test_availability_now_and_per_agent(known_data):
    at = open_page("availability")
    at.radio(key="av_mode").set_value("Custom window").run()
    today = known_data.date()
    at.date_input(key="av_days").set_value((today - timedelta(days=1), today))
    at.checkbox(key="av_whole_day").check()
    at.number_input(key="av_limit").set_value(5).run()
    assert not at.exception, at.exception
    assert any(s.value.startswith("Available now (1)") for s in at.subheader)
    assert "Alice" in markdown(at)
    away = table(at, 0)
    assert list(away["agent"]) == ["Bob"] and list(away["for"]) == ["10m"]
    agents = table(at, 1).set_index("user")
    assert metrics(at)["Agents"] == "5"  # Eve hides her last seen: not listed
    assert agents.loc["2", "available"] == "1h 50m"
    assert agents.loc["2", "in away"] == "10m"
    assert agents.loc["2", "online"] == "2h 00m"
    assert agents.loc["1", "available"] == "1h 00m"
    assert agents.loc["3", "sessions"] == 1
    assert "5" not in agents.index
    # Alice was available for 1 of the 24 + hours of the two whole days
    assert 0 < agents.loc["1", "availability"] < 5


# ---------------------------------------------------------------------------
# Export


def test_export_shows_the_equivalent_command(known_data):
    at = open_page("export")
    today = known_data.date()
    at.radio(key="ex_dataset").set_value("sessions")
    at.selectbox(key="ex_team").select("sales")
    at.selectbox(key="ex_format").select("jsonl").run()
    assert not at.exception, at.exception
    command = at.code[0].value
    start = today - timedelta(days=6)
    assert command == (
        f"presence export --dataset sessions --from {start} --to {today} --team sales "
        f"--tz UTC --format jsonl --output presence-sessions-{start}_{today}.jsonl"
    )
    assert at.get("download_button")[0].proto.label.startswith("Download presence-sessions-")


def test_export_file_equals_the_cli_stream(known_data, engine):
    from presence_core.dashboard import data

    from presence_core import export

    filters = export.ExportFilters(include_hidden=True)
    produced = data.export_file(engine, "transitions", "csv", filters).read()
    assert produced == b"".join(export.stream_export(engine, "transitions", "csv", filters))
    assert produced.count(b"\n") == 12  # header and the 11 transitions


# ---------------------------------------------------------------------------
# database down, then back


class _Forwarder:
    """A TCP forwarder to the test database on a port of its own: while it is not
    running, the database is unreachable for whoever uses that port."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.server: socket.socket | None = None

    def start(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_database_down_shows_a_message_and_recovers(known_data, database_url, monkeypatch):
    forwarder = _Forwarder(database_url.port)
    via = database_url.set(port=forwarder.port)
    monkeypatch.setenv("PRESENCE_DATABASE_URL", via.render_as_string(hide_password=False))
    at = open_page()
    assert any("The database is not answering" in e.value for e in at.error)
    assert not at.metric
    forwarder.start()
    try:
        at.run()  # what the page's retry does every few seconds
        assert not at.exception, at.exception
        assert not at.error
        assert metrics(at)["Present now"] == "2"
    finally:
        forwarder.stop()


# ---------------------------------------------------------------------------
# access and the command


def test_password_gate(known_data):
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.secrets["access"] = {"password": "open sesame"}
    at.run()
    assert not at.metric  # nothing shown before the password
    at.text_input(key="pd_password").input("wrong").run()
    assert any("Wrong password" in e.value for e in at.error)
    assert not at.metric
    at.text_input(key="pd_password").input("open sesame").run()
    assert not at.exception, at.exception
    assert metrics(at)["Present now"] == "2"


def test_dashboard_command_environment_and_errors(monkeypatch, capsys):
    import argparse

    from presence_core.cli import main
    from presence_core.commands import dashboard as cmd_dashboard

    parser = argparse.ArgumentParser()
    cmd_dashboard.add_arguments(parser)
    args = parser.parse_args(
        ["--port", "9999", "--database-url", "postgresql://u:p@db:5432/x", "--tz", "Europe/Paris"]
    )
    env = cmd_dashboard.environment(args, {"PATH": "/bin", "PRESENCE_SERVER_URL": "http://s:1"})
    assert env["PRESENCE_DATABASE_URL"] == "postgresql://u:p@db:5432/x"
    assert env["PRESENCE_TZ"] == "Europe/Paris"
    assert env["PRESENCE_SERVER_URL"] == "http://s:1"  # forwarded untouched
    assert cmd_dashboard.command(args)[-4:] == [
        "--server.headless=true",
        "--server.port=9999",
        "--server.address=127.0.0.1",
        "--browser.gatherUsageStats=false",
    ]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["dashboard", "--port", str(port)]) == 1
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    monkeypatch.setenv("PRESENCE_TZ", "Mars/Olympus")
    assert main(["dashboard", "--port", str(free_port())]) == 1
    assert "unknown time zone 'Mars/Olympus'" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Live: the chart of the last hours and the feed of the latest changes


def _chart_points(at: AppTest) -> list[int]:
    """The Live chart's points (users present), as sent to the browser."""
    import pyarrow as pa

    charts = [n for n in at._tree if n.type == "vega_lite_chart"]
    assert len(charts) == 1
    frame = pa.ipc.open_stream(charts[0].proto.data.data).read_pandas()
    return frame["present"].tolist()


def _feed_rows(at: AppTest) -> list[str]:
    """The feed's entries as ``name change`` texts, newest first."""
    import re

    text = next(
        m.value for m in at.markdown if 'class="pd-feed"' in m.value or "No changes" in m.value
    )
    return [
        f"{name} {change}"
        for name, change in re.findall(
            r'<div class="pd-name">([^<]*) <span[^>]*>([^<]*)</span>', text
        )
    ]


def test_live_chart_ends_at_the_present_count(known_data):
    at = open_page()
    points = _chart_points(at)
    assert points[-1] == 2  # Alice and Bob, now
    # Carol, Dave, Alice, Bob and Frank overlapped three hours ago: the 6 h chart saw them
    assert max(points) >= 3
    assert len(points) <= 6 * 12 + 2  # 5-minute points, never the raw transitions
    caption = " ".join(c.value for c in at.caption)
    assert "Now 2 present" in caption


def test_live_feed_names_the_changes_newest_first(known_data):
    at = open_page()
    assert _feed_rows(at) == [
        "Frank left",
        "Carol left",
        "Bob went away",
        "Frank came",
        "Alice came",
        "Bob came",
        "Carol came",
        "Dave left",
        "Dave came",
    ]
    # Eve hides her last seen: her changes are individual times, never in the feed
    assert "Eve" not in markdown(at)


def test_live_feed_and_chart_follow_the_team_filter(known_data):
    at = open_page()
    at.selectbox(key="live_team").select("sales").run()
    assert not at.exception, at.exception
    assert _feed_rows(at) == ["Carol left", "Carol came", "Dave left", "Dave came"]
    assert _chart_points(at)[-1] == 0


def test_live_feed_on_an_empty_database(dashboard_env):
    at = open_page()
    assert not [n for n in at._tree if n.type == "vega_lite_chart"]
    assert any("No presence data yet" in info.value for info in at.info)


# ---------------------------------------------------------------------------
# Availability: each team's last complete shift and who is missing, at 01:00 UTC


def last_0100() -> datetime:
    """The latest 01:00 UTC at or before now: the hour issue 15 was found at."""
    now = datetime.now(UTC)
    at = now.replace(hour=1, minute=0, second=0, microsecond=0)
    return at if at <= now else at - timedelta(days=1)


@pytest.fixture
def shifts_data(engine, dashboard_env):
    return write_shift_scene(engine)


def write_shift_scene(engine) -> datetime:
    """Three teams with their own zones and shifts, seen at 01:00 UTC: Berlin's night
    desk is on shift (its last complete shift ended yesterday morning), Los Angeles'
    day shift has just ended (at this minute in winter), and London's ended yesterday."""
    from presence_core.database.teams import write_teams
    from presence_core.shifts import TeamSettings, current_shift, last_complete_shift

    as_of = last_0100()
    night = TeamSettings("night", "Europe/Berlin", time(22), time(6), 75.0)
    west = TeamSettings("west", "America/Los_Angeles", time(9), time(17))
    day = TeamSettings("day", "Europe/London", time(9), time(17), 50.0)
    with engine.begin() as conn:
        write_teams(conn, [night, west, day])
    n_last, n_now = last_complete_shift(night, as_of), current_shift(night, as_of)
    w_last, d_last = last_complete_shift(west, as_of), last_complete_shift(day, as_of)
    half = timedelta(seconds=n_last.seconds / 2)

    def person(user, name, team, rows):
        return [_t(user, s, at, user_name=name, user_type="agent", team=team) for s, at in rows]

    rows = [
        *person(
            "n1",
            "Nina",
            "night",
            [
                ("online", n_last.start - timedelta(minutes=10)),
                ("offline", n_last.end),
                ("online", n_now.start),
            ],
        ),
        *person(
            "n2",
            "Noah",
            "night",
            [
                ("online", n_last.start),
                ("offline", n_last.start + half),
                ("online", n_now.start),
                ("away", as_of - timedelta(minutes=30)),
            ],
        ),
        *person(
            "n3",
            "Nils",
            "night",
            [
                ("online", n_last.start - timedelta(days=3)),
                ("offline", n_last.start - timedelta(days=2, hours=20)),
            ],
        ),
        *person("h1", "Hanna", "night", [("online", n_last.start - timedelta(hours=1, minutes=7))]),
        *person("w1", "Walt", "west", [("online", w_last.start), ("offline", w_last.end)]),
        *person(
            "d1",
            "Dora",
            "day",
            [("online", d_last.start), ("offline", d_last.start + timedelta(hours=4))],
        ),
    ]
    write_batch(engine, rows)
    with engine.begin() as conn:
        conn.execute(
            update(tables.users).where(tables.users.c.user_id == "h1").values(hide_last_seen=True)
        )
    return as_of


def open_availability_at(as_of: datetime) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["as_of"] = as_of.strftime("%Y-%m-%dT%H:%MZ")
    at.run()
    assert not at.exception, at.exception
    at.switch_page("../pages/availability.py").run()
    assert not at.exception, at.exception
    return at


def test_availability_opens_on_each_teams_last_shift_at_01_utc(shifts_data):
    at = open_availability_at(shifts_data)
    assert at.radio(key="av_mode").value == "Each team's last shift"
    assert any(s.value.startswith("Who is missing at ") for s in at.subheader)
    staffing = table(at, 0).set_index("team")
    # the night desk is on shift: Nina and Hanna (hidden, but counted) available,
    # Noah away, Nils offline: 50 % against a 75 % target
    assert staffing.loc["night", ["scheduled", "available", "away", "offline"]].tolist() == [
        4,
        2,
        1,
        1,
    ]
    assert staffing.loc["night", "available %"] == 50.0
    assert bool(staffing.loc["night", "below target"])
    assert staffing.loc["night", "shift"] == "22:00–06:00 Europe/Berlin"
    assert staffing.loc["night", "now"] == "on shift until 06:00"
    # the others are between shifts: nobody is missing there
    assert (
        staffing.loc["west", "now"] == "between shifts" and not staffing.loc["west", "below target"]
    )
    assert staffing.loc["day", "now"] == "between shifts"
    # on shift: missing first (Noah away for 30 min, then Nils), then the available
    on_shift = table(at, 1)
    assert on_shift["agent"].tolist() == ["Noah", "Nils", "Nina", "Hanna"]
    assert on_shift["for"].tolist()[0] == "30m"
    assert on_shift.set_index("agent").loc["Hanna", "since"] == ""  # hides her times
    # the last complete shift of each team, in its own zone: never empty at 01:00 UTC
    teams = table(at, 2).set_index("team")
    assert teams.loc["west", "mean availability %"] == 100.0
    assert teams.loc["day", "mean availability %"] == 50.0
    assert teams.loc["night", "agents"] == 3  # Hanna is left out of per-agent figures
    assert teams.loc["night", "settings"] == "22:00–06:00 Europe/Berlin"
    assert "22:00" in teams.loc["night", "shift"] and "06:00" in teams.loc["night", "shift"]
    agents = table(at, 3).set_index("user")
    assert agents["availability"].to_dict() == {
        "d1": 50.0,
        "n1": 100.0,
        "n2": 50.0,
        "n3": 0.0,
        "w1": 100.0,
    }
    assert "Hanna" not in table(at, 3).to_csv()


def test_availability_for_one_team_measures_against_its_target(shifts_data):
    at = open_availability_at(shifts_data)
    at.selectbox(key="av_team").select("night").run()
    assert not at.exception, at.exception
    shown = metrics(at)
    assert shown["Available"] == "2 of 4"
    assert shown["Shift now"] == "22:00–06:00"
    delta = next(m for m in at.metric if m.label == "Available").proto.delta
    assert delta == "-25 points vs the 75 % target"
    assert table(at, 0)["team"].tolist() == ["night"]
    assert set(table(at, 3)["team"]) == {"night"}
    # a viewer's default target for teams without one highlights London's too
    at.selectbox(key="av_team").select("All teams").run()
    at.number_input(key="av_target").set_value(90).run()
    teams = table(at, 2).set_index("team")
    assert teams.loc["west", "target %"] == 90 and teams.loc["day", "target %"] == 50


def test_availability_without_teams_or_data_says_what_to_do(dashboard_env, engine):
    at = open_page("availability")
    assert any("No presence data yet" in info.value for info in at.info)
    write_batch(engine, [_t("x", "online", datetime.now(UTC) - timedelta(hours=1))])
    st.cache_data.clear()
    at = open_page("availability")
    assert any("No user belongs to a team yet" in info.value for info in at.info)


def test_availability_ignores_an_unreadable_as_of(shifts_data):
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["as_of"] = "yesterday-ish"
    at.run()
    at.switch_page("../pages/availability.py").run()
    assert not at.exception, at.exception
    assert any("Ignored ?as_of=yesterday-ish" in w.value for w in at.warning)
    assert any(s.value == "Who is missing now" for s in at.subheader)
    # a time in the future is now: the page never pretends to know tomorrow
    at = open_availability_at(datetime.now(UTC) + timedelta(days=2))
    assert any(s.value.startswith("Who is missing at ") for s in at.subheader)
    assert not at.exception
