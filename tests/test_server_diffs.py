"""Diffs sent straight to the WebSocket (past engine.io's queue and writer task) keep
their place among everything else the connection is sent.

A ``subscribe`` acknowledgement goes through engine.io's queue and a tick's diffs go
directly when nothing is queued; were the two ever reordered, a client would see a
``seq`` jump (or an acknowledgement older than a diff) and re-subscribe for nothing.
A raw WebSocket client records every frame in arrival order while a user changes
status as fast as it can and the client subscribes again and again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import aiohttp
import pytest

from presence_core.server.batching import _FRAME_CACHE
from tests.server_harness import running_server


async def _watch(url: str, subscribes: int) -> list[tuple[str, int]]:
    """``("ack", seq)`` and ``("diff", seq)`` in the order the frames arrived."""
    ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    seen: list[tuple[str, int]] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        assert (await ws.receive_str()).startswith("0")
        await ws.send_str('40{"protocol":2}')
        assert (await ws.receive_str()).startswith("40")
        acks = 0
        await ws.send_str('421["subscribe",{"teams":["A"]}]')
        while acks < subscribes:
            text = await asyncio.wait_for(ws.receive_str(), 10)
            if text == "2":
                await ws.send_str("3")
            elif text.startswith('42["presenceDiff"'):
                seen.append(("diff", json.loads(text[2:])[1]["seq"]))
            elif text.startswith("43"):
                acks += 1
                seen.append(("ack", json.loads(text[text.index("[") :])[0]["seq"]))
                await ws.send_str(f'42{acks + 1}["subscribe",{{"userIds":[{acks}]}}]')
    return seen


def _while_toggling(srv, watching: Coroutine[Any, Any, list]) -> list:
    """Run ``watching`` while user ``u`` (team A) switches between away and busy as
    fast as the server lets it; its result."""
    tab = srv.client()
    assert tab.call("userOnline", {"userId": "u", "team": "A"}) == {"ok": True}

    async def toggle(stop: asyncio.Event) -> None:
        status = "away"
        while not stop.is_set():
            await tab.sio.call("userStatus", {"userId": "u", "status": status})
            status = "busy" if status == "away" else "away"

    async def run() -> list:
        stop = asyncio.Event()
        toggling = asyncio.ensure_future(toggle(stop))
        try:
            return await watching
        finally:
            stop.set()
            await toggling

    return srv.loop.run(run(), timeout=60)


def test_direct_diffs_keep_their_place_among_acknowledgements():
    with running_server(diff_interval=0.01, status_rate=10_000, status_burst=10_000) as srv:
        seen = _while_toggling(srv, _watch(srv.url, 200))
        last = 0
        for kind, seq in seen:
            if kind == "diff":
                assert seq == last + 1, seen  # consecutive: nothing overtook anything
                last = seq
            else:
                assert seq == last, seen  # the ack follows every diff it accounts for
        assert sum(kind == "diff" for kind, _ in seen) >= 20
        assert srv.server.health()["diffs_direct"] > 0  # the direct path was taken
        # one connection's diffs are framed, not kept where broadcasts' frames are
        assert not [text for text in _FRAME_CACHE if "presenceDiff" in text]


def test_a_direct_packet_never_overtakes_one_engine_io_still_holds():
    """Staged: a packet goes into engine.io's queue, then, after 0, 1, 2… turns of the
    loop (the writer task taking it meanwhile, step by step), another is offered to
    the direct path. Whenever it is taken, it must arrive after the first."""
    with running_server() as srv:
        frames: list[str] = []

        async def client(ready: asyncio.Event, done: asyncio.Event) -> None:
            ws_url = srv.url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
            async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
                await ws.receive_str()
                await ws.send_str('40{"protocol":2}')
                await ws.receive_str()
                ready.set()
                while not done.is_set():
                    text = await asyncio.wait_for(ws.receive_str(), 10)
                    frames.append(text)
                    done.set() if text == '42["probe","B7"]' else None

        async def stage(turns: int) -> bool:
            (watcher,) = srv.server.subscriptions.watchers.values()
            socket = srv.server.sio.eio.sockets[watcher.eio_sid]
            await srv.server.broadcaster.send_text(watcher.eio_sid, f'2["probe","A{turns}"]')
            for _ in range(turns):
                await asyncio.sleep(0)
            text = f'42["probe","B{turns}"]'
            if watcher.out.send_now(text, socket):
                return True
            await srv.server.broadcaster.send_text(watcher.eio_sid, text[1:])
            return False

        async def run() -> list[bool]:
            ready, done = asyncio.Event(), asyncio.Event()
            reading = asyncio.ensure_future(client(ready, done))
            await asyncio.wait_for(ready.wait(), 10)
            from tests.waiting import async_wait_for

            await async_wait_for(lambda: srv.server.subscriptions.watchers, what="watcher")
            direct = [await stage(turns) for turns in range(8)]
            await asyncio.wait_for(reading, 10)
            return direct

        direct = srv.loop.run(run(), timeout=30)
        probes = [text for text in frames if '"probe"' in text]
        for turns in range(8):
            assert probes.index(f'42["probe","A{turns}"]') < probes.index(
                f'42["probe","B{turns}"]'
            ), (turns, probes, direct)
        assert not direct[0]  # still queued: never direct
        assert any(direct)  # once the writer has it all, the direct path is open


def test_a_packet_engine_io_took_but_has_not_handed_on_closes_the_direct_path():
    """The moment the staging above cannot pin down: engine.io's writer has taken the
    packet from its queue (empty now) but has not yet handed it over (it calls
    ``task_done`` when it has). A real asyncio queue, in engine.io's socket's place."""
    from types import SimpleNamespace

    from presence_core.server.batching import _engine_idle

    async def steps() -> list[bool]:
        queue: asyncio.Queue = asyncio.Queue()
        socket = SimpleNamespace(queue=queue, upgraded=True, closed=False, closing=False)
        seen = [_engine_idle(socket)]
        queue.put_nowait("packet")
        seen.append(_engine_idle(socket))  # queued
        queue.get_nowait()
        seen.append(_engine_idle(socket))  # taken, not handed on
        queue.task_done()
        seen.append(_engine_idle(socket))  # handed on
        socket.closing = True
        seen.append(_engine_idle(socket))
        return seen

    assert asyncio.run(steps()) == [True, False, False, True, False]


def test_ticks_keep_to_their_grid_and_never_come_two_at_once():
    """A tick that ran late does not push the later ones back (the diffs would come
    further apart than the interval under load); one later than a whole interval
    skips to the grid's next point still ahead, not to a burst of ticks."""
    from presence_core.server.watching import next_tick

    assert next_tick(10.0, 10.05, 0.2) == pytest.approx(10.2)  # on time: one interval on
    assert next_tick(10.0, 10.15, 0.2) == pytest.approx(10.2)  # late: the grid, not 10.35
    assert next_tick(10.0, 10.5, 0.2) == pytest.approx(10.6)  # 0.3 s behind: the next point
    assert next_tick(10.0, 10.65, 0.2) == pytest.approx(10.8)
    due, now = 0.0, 0.0
    for late in (0.05, 0.3, 0.0, 0.19, 1.0, 0.0):  # whatever the lateness: ahead, on the grid
        due = next_tick(due, now, 0.2)
        assert due >= now and round(due / 0.2, 6) == round(due / 0.2)
        now = due + late


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_our_text_frames_are_the_bytes_websockets_makes(size):
    """The write batcher frames each text itself (cheaper than websockets' Frame): the
    bytes must be websockets' own at every length encoding (7-bit, 16-bit, 64-bit)."""
    from websockets.frames import Frame, Opcode

    from presence_core.server.batching import _text_frame

    for text in ("x" * size, ("é" * size)[: size // 2]):
        assert _text_frame(text) == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


async def _guide_frames(url: str, lists: int) -> list[tuple[str, str]]:
    """A raw guide client asking ``getOnlineUsers`` again and again: in arrival order,
    ``("list", when u's status in it began)`` and ``("change", its lastSeen)`` for
    each broadcast (ISO texts of one format: they sort as the moments do)."""
    ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    seen: list[tuple[str, str]] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        assert (await ws.receive_str()).startswith("0")
        await ws.send_str("40")
        assert (await ws.receive_str()).startswith("40")
        await ws.send_str('42["getOnlineUsers"]')
        got = 0
        while got < lists:
            text = await asyncio.wait_for(ws.receive_str(), 10)
            if text == "2":
                await ws.send_str("3")
            elif text.startswith('42["userStatusChanged"'):
                seen.append(("change", json.loads(text[2:])[1]["lastSeen"]))
            elif text.startswith('42["onlineUsersList"'):
                got += 1
                (entry,) = [e for e in json.loads(text[2:])[1] if e["userId"] == "u"]
                seen.append(("list", entry["statusSince"]))
                await ws.send_str('42["getOnlineUsers"]')
    return seen


def test_direct_broadcasts_keep_their_place_among_online_lists():
    """A guide client's broadcasts go straight to its WebSocket when engine.io holds
    nothing for it, its ``onlineUsersList`` answers through engine.io: the changes
    must arrive in the order they were made, and a list never be older than a change
    heard before it (its user's status must have begun no earlier)."""
    with running_server(status_rate=10_000, status_burst=10_000) as srv:
        seen = _while_toggling(srv, _guide_frames(srv.url, 200))
        changes = [stamp for kind, stamp in seen if kind == "change"]
        assert len(changes) >= 20
        assert changes == sorted(changes), seen
        heard = ""
        for kind, stamp in seen:
            if kind == "change":
                heard = stamp
            else:
                assert stamp >= heard, seen
        assert srv.server.health()["broadcasts_direct"] > 0  # the direct path was taken
