"""The spool: append-only segments replayed in order, nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from presence_core.database import engine as dbmod
from presence_core.database.records import write_records
from presence_core.database.storage import Transition
from presence_core.listener import Stats, WritePipeline
from presence_core.listener.spool import Spool, SpoolBusy
from tests.conftest import free_port
from tests.test_listener import ScriptedServer, listening, transitions, wait_rows

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def numbered(start: int, count: int) -> list[dict]:
    return [{"n": i} for i in range(start, start + count)]


def test_replay_in_order_then_empty(tmp_path):
    spool = Spool(tmp_path / "s")
    assert spool.empty() and spool.segments() == []
    spool.append(numbered(0, 3))
    spool.append(numbered(3, 4))
    spool.rotate()
    spool.append(numbered(7, 3))  # a second segment
    spool.rotate()
    seen: list[int] = []
    assert spool.replay(lambda chunk: seen.extend(r["n"] for r in chunk), chunk=2) == 10
    assert seen == list(range(10))
    assert spool.empty() and spool.segments() == []


def test_open_segment_is_not_replayed_until_rotated(tmp_path):
    spool = Spool(tmp_path / "s")
    spool.append(numbered(0, 2))
    assert spool.replay(lambda chunk: None) == 0  # still open: appends may follow
    spool.rotate()
    assert spool.replay(lambda chunk: None) == 2


def test_refused_chunk_stays_and_is_offered_again(tmp_path):
    spool = Spool(tmp_path / "s")
    spool.append(numbered(0, 5))
    spool.rotate()
    offered: list[list[int]] = []

    def refuse_second(chunk):
        offered.append([r["n"] for r in chunk])
        if len(offered) == 2:
            raise ConnectionError("database down")

    with pytest.raises(ConnectionError):
        spool.replay(refuse_second, chunk=2)
    assert spool.segments()  # kept whole
    again: list[int] = []
    spool.replay(lambda chunk: again.extend(r["n"] for r in chunk))
    assert again == list(range(5))  # from the start: the writer is idempotent
    assert spool.empty()


def test_appends_during_replay_go_to_a_new_segment(tmp_path):
    spool = Spool(tmp_path / "s")
    spool.append(numbered(0, 3))
    spool.rotate()
    seen: list[int] = []

    def accept(chunk):
        seen.extend(r["n"] for r in chunk)
        if seen == [0, 1, 2]:
            spool.append(numbered(3, 2))  # received meanwhile

    spool.replay(accept)
    assert seen == [0, 1, 2] and len(spool.segments()) == 1
    spool.rotate()
    spool.replay(accept)
    assert seen == [0, 1, 2, 3, 4] and spool.empty()


def test_torn_last_line_is_skipped_and_counted(tmp_path):
    spool = Spool(tmp_path / "s")
    spool.append(numbered(0, 2))
    spool.rotate()
    with open(spool.segments()[0], "ab") as handle:
        handle.write(b'{"n": 2, "trunc')  # a crash in the middle of a write
    seen: list[int] = []
    spool.replay(lambda chunk: seen.extend(r["n"] for r in chunk))
    assert seen == [0, 1] and spool.bad_lines == 1


def test_appended_records_survive_sigkill(tmp_path):
    """What append() returned from is in the kernel: a SIGKILL right after loses nothing."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from presence_core.listener.spool import Spool
        spool = Spool({str(tmp_path / "s")!r}, fsync_interval=3600)
        for i in range(100):
            spool.append([{{"n": i}}])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert result.returncode == -9
    assert [r["n"] for r in Spool(tmp_path / "s").read_all()] == list(range(100))


def test_write_records_drops_only_the_row_the_database_refuses(engine):
    good = [Transition(str(i), "online", T0 + timedelta(seconds=i), T0) for i in range(3)]
    poison = Transition("p", "online", T0, T0, user_name="nul\x00byte")  # text cannot hold NUL
    inserted, refused = write_records(engine, [good[0], poison, *good[1:]])
    assert (inserted, refused) == (3, 1)
    assert transitions(engine) == [
        ("0", "online", False),
        ("1", "online", False),
        ("2", "online", False),
    ]
    assert write_records(engine, good) == (0, 0)  # a replay inserts nothing twice


def test_full_queue_spills_to_the_spool_without_loss(engine, tmp_path):
    async def scenario():
        server = await ScriptedServer().start()
        try:
            async with listening(engine, server.url, tmp_path, queue_size=5) as listener:
                start = datetime.now(UTC) - timedelta(seconds=2)
                for i in range(300):
                    at = start + timedelta(milliseconds=i)
                    await server.send({"userId": i, "status": "online", "lastSeen": at.isoformat()})
                expected = sorted((str(i), "online", False) for i in range(300))
                await wait_rows(engine, expected, timeout=30)
                assert listener.stats.spooled > 0
                await asyncio.wait_for(_until(lambda: not listener.spooling), 10)
                assert listener.stats.replayed == listener.stats.spooled
        finally:
            await server.stop()

    asyncio.run(scenario())


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.02)


# --- one writer per spool ---------------------------------------------------------------


def test_a_second_writer_cannot_take_a_spool_in_use(tmp_path):
    first, second = Spool(tmp_path / "s"), Spool(tmp_path / "s")
    first.append(numbered(0, 2))
    with pytest.raises(SpoolBusy, match=f"pid {os.getpid()}"):
        second.append(numbered(2, 1))
    first.rotate()
    with pytest.raises(SpoolBusy):
        second.replay(lambda chunk: None)  # it would delete what the first still holds
    first.close()
    seen: list[int] = []
    second.replay(lambda chunk: seen.extend(r["n"] for r in chunk))  # free now
    assert seen == [0, 1]
    second.close()
    assert not (tmp_path / "s").exists()  # an empty spool leaves nothing behind


def test_a_spool_held_by_a_killed_process_is_free_again(tmp_path):
    """The lock is the kernel's: a writer that dies (SIGKILL) lets go of it."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from presence_core.listener.spool import Spool
        spool = Spool({str(tmp_path / "s")!r})
        spool.append([{{"n": 0}}])
        print("holding", flush=True)
        time.sleep(120)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding"
        with pytest.raises(SpoolBusy, match=f"pid {child.pid}"):
            Spool(tmp_path / "s").claim()
    finally:
        child.kill()
        child.wait()
    mine = Spool(tmp_path / "s")
    mine.claim()
    assert [r["n"] for r in mine.read_all()] == [0]
    mine.close()
    assert mine.segments()  # not empty: kept


def test_records_the_spool_cannot_take_are_counted_as_lost(engine, tmp_path):
    """A spool that cannot be used (here: held by another writer) loses what it is
    given; the pipeline counts it and says so instead of failing the writer."""

    async def scenario():
        holder = Spool(tmp_path / "s")
        holder.claim()
        stats = Stats()
        dead = dbmod.make_engine(
            engine.url.set(host="127.0.0.1", port=free_port()), connect_args={"connect_timeout": 2}
        )
        pipeline = WritePipeline(dead, Spool(tmp_path / "s"), stats, writer="thread")
        pipeline.start()
        pipeline.enqueue(Transition("1", "online", T0, T0), T0)
        await asyncio.wait_for(_until(lambda: stats.dropped == 1), 15)
        await pipeline.close()
        holder.close()
        dead.dispose()
        assert (stats.spooled, stats.db_errors >= 1) == (0, True)

    asyncio.run(scenario())
