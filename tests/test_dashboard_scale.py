"""Every page at 5,000 users (issue 15): each opens without an exception and ships no
more than it must to the browser: Live at most its cards, a 30-entry feed and one
chart point per 5 minutes; no table over ``MAX_ROWS``."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta

import pyarrow as pa
import pytest
from presence_core.dashboard import data
from streamlit.testing.v1 import AppTest

from presence_core.database.storage import Transition, write_batch
from presence_core.database.teams import write_teams
from presence_core.shifts import TeamSettings
from tests.test_dashboard_pages import APP, dashboard_env  # noqa: F401 (a fixture)

USERS = 5_000
TEAMS = [
    TeamSettings("night", "Europe/Berlin", time(22), time(6), 80.0),
    TeamSettings("apac", "Asia/Tokyo", time(9), time(18)),
    TeamSettings("west", "America/Los_Angeles", time(8), time(16), 60.0),
    TeamSettings("emea", "Europe/London", time(9), time(17)),
]


@pytest.fixture
def crowd(engine, dashboard_env):  # noqa: F811
    """5,000 agents in four teams, each with a day of comings and goings."""
    rng = random.Random(15)
    now = datetime.now(UTC)
    rows = []
    for i in range(USERS):
        team = TEAMS[i % len(TEAMS)].team
        at = now - timedelta(hours=26) + timedelta(seconds=rng.randrange(3600))
        meta = {"user_name": f"Agent {i}", "user_type": "agent", "team": team}
        for _ in range(rng.randrange(2, 7)):
            status = rng.choice(["online", "online", "away", "offline"])
            rows.append(Transition(str(1000 + i), status, at, at, source="scale", **meta))
            at += timedelta(seconds=rng.randrange(600, 4 * 3600))
    rows = [r for r in rows if r.occurred_at < now]
    write_batch(engine, rows)
    with engine.begin() as conn:
        write_teams(conn, TEAMS)
    return now


def _run(page: str | None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(f"../pages/{page}.py").run()
        assert not at.exception, (page, at.exception)
    return at


def _chart_points(at: AppTest) -> int:
    charts = [n for n in at._tree if n.type == "vega_lite_chart"]
    return sum(pa.ipc.open_stream(c.proto.data.data).read_all().num_rows for c in charts)


def test_every_page_works_and_ships_little_at_5000_users(crowd):
    live = _run(None)
    cards = "\n".join(m.value for m in live.markdown if 'class="pd-list pd-present"' in m.value)
    assert 0 < cards.count('class="pd-user"') <= 500
    feed = next(m.value for m in live.markdown if 'class="pd-feed"' in m.value)
    assert feed.count('class="pd-user"') == 30
    assert 0 < _chart_points(live) <= 6 * 12 + 2
    for page in ("last_seen", "activity", "availability", "export", "health"):
        at = _run(page)
        for frame in at.dataframe:
            assert len(frame.value) <= data.MAX_ROWS, page
    # Availability: every team's figures, and one team's agents only when one is chosen
    at = _run("availability")
    assert sorted(at.dataframe[0].value["team"]) == sorted(t.team for t in TEAMS)
    assert at.dataframe[0].value["scheduled"].sum() == USERS
    at.selectbox(key="av_team").select("night").run()
    assert not at.exception, at.exception
    assert len(at.dataframe[-1].value) == USERS // len(TEAMS)
