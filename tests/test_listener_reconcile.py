"""The reconcile against a database that another writer changes meanwhile.

The listener asks for the online list when it connects and reads the database
after the list arrives. A change stored in between by another writer (our
server's own writes, a second listener) is newer than the list: the reconcile
must not contradict it (no invented offline, no invented online).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from presence_core.database.storage import Sighting, Transition, write_batch
from presence_core.listener import UserView, plan_reconcile
from presence_core.protocol import OnlineUser
from tests.test_listener import (  # noqa: F401 - node is a fixture
    db,
    listening,
    needs_node,
    node,
    transitions,
    users,
    wait_rows,
)
from tests.waiting import async_wait_for

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
GAP, BACK = T0, T0 + timedelta(minutes=10)


def plan(state: dict[str, UserView], snapshot: list[OnlineUser]) -> dict[str, object]:
    rows = plan_reconcile(state, snapshot, gap_start=GAP, reconnect_at=BACK, received_at=BACK)
    return {row.user_id: row for row in rows}


def test_a_status_stored_after_the_list_was_asked_for_is_left_alone():
    after = BACK + timedelta(milliseconds=300)
    rows = plan(
        {
            "came": UserView("online", after, after),  # stored by the server meanwhile
            "went": UserView("offline", after, after),
        },
        [OnlineUser("went", "online", T0 + timedelta(minutes=5))],
    )
    assert rows == {}


def test_a_status_from_before_the_request_is_still_reconciled():
    # began during the gap, well before the list was asked for: the list is newer
    during = BACK - timedelta(seconds=30)
    rows = plan({"left": UserView("online", during, during)}, [])
    assert isinstance(rows["left"], Transition)
    assert (rows["left"].status, rows["left"].inferred) == ("offline", True)


def test_the_listeners_own_last_status_before_a_short_gap_is_still_reconciled():
    # a gap shorter than the slack: the listener's own row (at or before the gap's
    # start) is what the list corrects, however close to the reconnect
    gap = BACK - timedelta(milliseconds=200)
    own = gap - timedelta(milliseconds=100)
    rows = plan_reconcile(
        {"left": UserView("online", own, own)},
        [],
        gap_start=gap,
        reconnect_at=BACK,
        received_at=BACK,
    )
    assert [(r.status, r.occurred_at, r.inferred) for r in rows] == [("offline", gap, True)]


def test_an_agreeing_newer_status_still_gets_its_names():
    after = BACK + timedelta(milliseconds=300)
    rows = plan(
        {"came": UserView("online", after, after)},
        [OnlineUser("came", "online", after, user_name="Cam")],
    )
    assert isinstance(rows["came"], Sighting) and rows["came"].user_name == "Cam"


def _blocked_state_reads(engine: Engine) -> int:
    """Sessions waiting for a lock on presence_users while reading it."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                " and query ilike '%from presence_users%' and datname = current_database()"
            )
        ).scalar_one()


@needs_node
def test_a_change_stored_while_the_list_travels_is_not_contradicted(node, engine, tmp_path):  # noqa: F811
    """Another writer stores Lou's arrival after the listener asked for the online
    list and before it reads the database (held exactly there by a table lock).
    The old reconcile wrote an inferred offline for Lou; the database is right."""

    async def reconcile_once() -> None:
        async with listening(engine, node.url, tmp_path, reconcile_timeout=60):
            pass  # stopping flushes whatever the reconcile decided

    async def scenario():
        async with users(node.url) as [tab]:
            await tab.online("stays", "Stay")
            async with listening(engine, node.url, tmp_path):
                await wait_rows(engine, [("stays", "online", False)])
            holder = engine.connect()
            holder.execute(text("lock table presence_users in access exclusive mode"))
            try:
                run = asyncio.create_task(reconcile_once())
                await async_wait_for(
                    lambda: db(_blocked_state_reads, engine),
                    30,
                    what="the listener's reconcile read waiting on the lock",
                )
                arrived = await db(_now, engine)  # after the listener asked for the list
                lou = Transition("lou", "online", arrived, arrived, source="server")
                write_batch(holder, [lou])
            finally:
                holder.commit()
                holder.close()
            await asyncio.wait_for(run, 60)
        assert await db(transitions, engine) == [
            ("lou", "online", False),
            ("stays", "online", False),
        ]

    asyncio.run(scenario())


def _now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        return conn.execute(text("select now()")).scalar_one()
