"""A listener that was away learns from our server when the users it missed left.

After a gap, the reconcile compares the server's online list with the database; a
user believed present but absent from the list left unseen. The guide's servers
cannot say when, so that offline is *inferred* at the gap's start. Our server
(alone or as a cluster node) remembers who left lately and when: the listener asks
``getUsersStatus`` for those users and writes their offline at that moment, not
inferred. It is then the same row (same key) the server itself stores, which is
what keeps a cluster whose nodes and listener both write from storing an offline
twice (docs/cluster.md, "Recording").
"""

from __future__ import annotations

import asyncio
import signal

from presence_core.database.storage import OFFLINE
from presence_core.listener.decisions import UserView, departures, plan_reconcile
from presence_core.protocol import parse_online_users
from presence_core.status import parse_timestamp
from tests.server_harness import running_server
from tests.test_listener import db, transition_rows, users, wait_rows
from tests.test_listener_faults import start_listener, stop_process

T0 = parse_timestamp("2026-12-06T08:00:00.000Z")
GAP = parse_timestamp("2026-12-06T08:10:00.000Z")
LEFT = parse_timestamp("2026-12-06T08:12:34.567Z")
BACK = parse_timestamp("2026-12-06T08:20:00.000Z")


def test_departures_keep_only_offline_answers_with_a_moment():
    answer = parse_online_users(
        [
            {"userId": 1, "status": "offline", "lastSeen": "2026-12-06T08:12:34.567Z",
             "statusSince": "2026-12-06T08:12:34.567Z"},
            {"userId": 2, "status": "offline", "lastSeen": "2026-12-06T08:00:00.000Z",
             "statusSince": None},  # known from the database only: when is not known
            {"userId": 3, "status": "online", "lastSeen": "2026-12-06T08:19:00.000Z",
             "statusSince": "2026-12-06T08:15:00.000Z"},
        ],
        skip_bad=True,
    )  # fmt: skip
    assert departures(answer) == {"1": LEFT}


def test_a_known_departure_is_written_at_its_moment_and_not_inferred():
    state = {"1": UserView("online", T0, T0), "2": UserView("online", T0, T0)}
    rows = plan_reconcile(
        state, [], gap_start=GAP, reconnect_at=BACK, received_at=BACK, left={"1": LEFT}
    )
    by_user = {row.user_id: row for row in rows}
    assert (by_user["1"].status, by_user["1"].occurred_at, by_user["1"].inferred) == (
        OFFLINE,
        LEFT,
        False,
    )
    assert (by_user["2"].occurred_at, by_user["2"].inferred) == (GAP, True)


def test_a_departure_not_after_the_stored_status_is_not_believed():
    # the server's moment is older than what is stored (another, later session began):
    # the list's absence is judged as before, inferred at the gap's start
    state = {"1": UserView("online", LEFT, LEFT)}
    for moment in (LEFT, T0):
        [row] = plan_reconcile(
            state, [], gap_start=GAP, reconnect_at=BACK, received_at=BACK, left={"1": moment}
        )
        assert row.inferred and row.occurred_at > LEFT


def test_a_listener_back_from_a_gap_records_when_our_server_saw_the_user_leave(
    engine, cli_env, tmp_path
):
    # our server keeps no history here: the listener alone writes, so after its gap the
    # database still says user 1 is online while the server's list does not have them
    async def scenario() -> None:
        with running_server(grace=0) as server:
            async with users(server.url) as [tab]:
                await tab.online(1, "Ann")
                listener = start_listener(cli_env, server.url, tmp_path)
                try:
                    await wait_rows(engine, [("1", "online", False)], 30)
                finally:
                    listener.kill()  # SIGKILL: a gap the listener cannot announce
                    listener.wait()
                await tab.offline(1)
                left = await tab.broadcast_time(1, "offline")
                listener = start_listener(cli_env, server.url, tmp_path)
                try:
                    await wait_rows(engine, [("1", "online", False), ("1", "offline", False)], 30)
                finally:
                    assert stop_process(listener, signal.SIGINT) == 0
        rows = {row.status: row for row in await db(transition_rows, engine)}
        assert rows["offline"].occurred_at == left
        assert rows["offline"].reason == "reconcile: left at the server's statusSince"

    asyncio.run(scenario())
