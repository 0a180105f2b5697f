"""Thousands of bad payloads: each gets a presenceError, none changes anything, and the
server keeps serving everyone else (property-based, over a real loopback connection)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence_core import protocol
from tests.server_harness import RunningServer, running_server
from tests.waiting import wait_for

EVENTS = protocol.CLIENT_EVENTS
RESERVED = set(EVENTS)  # "connect", "disconnect" and "*" are fair game: refused too

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

bad_ids = (
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False).filter(lambda f: not f.is_integer())
    | st.just("")
    | st.text(alphabet=" \t\n", min_size=1, max_size=5)
    | st.text(min_size=257, max_size=300)
    | st.integers(100_000, 100_010).map(lambda n: "x" * n)  # 100 kB ids
    | st.lists(json_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=5), json_scalars, max_size=3)
)
good_ids = st.integers(min_value=0, max_value=10**9) | st.text(min_size=1, max_size=20).filter(
    lambda s: s.strip() and s.strip() != "fuzz"
)
not_text = (
    st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.lists(json_scalars, min_size=1, max_size=3)
    | st.dictionaries(st.text(max_size=5), json_scalars, min_size=1, max_size=3)
)
bad_statuses = (
    not_text
    | st.just("")
    | st.just("offline")
    | st.text(min_size=65, max_size=80).filter(lambda s: len(s.strip()) > 64)
    | st.text(alphabet="<>{}\"'!?;$%", min_size=1, max_size=5)
)


def _with(base: dict, **fields) -> dict:
    return {**base, **fields}


def _bad_calls() -> st.SearchStrategy[tuple[str, tuple]]:
    """(event, arguments) pairs the server must refuse."""
    not_object = json_values.filter(lambda v: not isinstance(v, dict)) | st.binary(max_size=30)
    any_event = st.sampled_from(["userOnline", "userOffline", "userHeartbeat", "userStatus"])
    return st.one_of(
        # not an object at all
        st.tuples(any_event, not_object.map(lambda v: (v,))).filter(lambda c: c[1] != (None,)),
        # a bad userId
        st.tuples(any_event, st.builds(lambda i, x: (_with(x, userId=i),), bad_ids, st.just({}))),
        # names that are not strings, or too long
        st.tuples(
            st.just("userOnline"),
            st.builds(
                lambda field, value: ({"userId": "fuzz", field: value},),
                st.sampled_from(["userName", "userType", "team"]),
                not_text
                | st.text(min_size=257, max_size=300).filter(lambda s: len(s.strip()) > 256),
            ),
        ),
        # someone else's id
        st.tuples(
            st.sampled_from(["userOffline", "userHeartbeat"]),
            good_ids.map(lambda i: ({"userId": i},)),
        ),
        st.tuples(
            st.just("userStatus"), good_ids.map(lambda i: ({"userId": i, "status": "away"},))
        ),
        # a bad status for one's own id
        st.tuples(
            st.just("userStatus"), bad_statuses.map(lambda s: ({"userId": "fuzz", "status": s},))
        ),
        # getOnlineUsers with data
        st.tuples(
            st.just("getOnlineUsers"),
            json_values.filter(lambda v: v is not None and v != {}).map(lambda v: (v,)),
        ),
        # too many arguments
        st.tuples(
            st.sampled_from(EVENTS),
            st.tuples(json_values, json_values),
        ),
        # an unknown event
        st.tuples(
            st.sampled_from(["connect", "disconnect", "*", "connect_error", "message", "ping"])
            | st.text(min_size=1, max_size=30).filter(lambda e: e not in RESERVED),
            st.lists(json_values, max_size=2).map(tuple),
        ),
    )


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[RunningServer, object, object]]:
    with running_server() as srv:
        watcher = srv.client()
        fuzzer = srv.client()
        fuzzer.emit("userOnline", {"userId": "fuzz", "userType": "agent", "userName": "F"})
        watcher.wait_change("fuzz", "online")
        yield srv, watcher, fuzzer


calls_made = {"n": 0}


# socket.io clients touch the global random module while hypothesis generates data
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(call=_bad_calls())
def test_bad_payloads_are_refused_and_change_nothing(fuzzed, call):
    srv, _, fuzzer = fuzzed
    event, args = call
    answer = fuzzer.loop.run(
        fuzzer.sio.call(event, args if len(args) != 1 else args[0], timeout=10)
    )
    calls_made["n"] += 1
    assert isinstance(answer, dict) and answer["ok"] is False, (event, args, answer)
    assert isinstance(answer["error"], str) and 0 < len(answer["error"]) < 300


def test_after_the_fuzz_nothing_changed_and_everyone_is_served(fuzzed):
    srv, watcher, fuzzer = fuzzed
    assert calls_made["n"] >= 1000  # the property above ran first, in this module
    wait_for(
        lambda: len(fuzzer.received("presenceError")) == calls_made["n"],
        what="one presenceError per bad call",
    )
    assert srv.snapshot() == {"fuzz": ("online", 1)}
    assert fuzzer.sio.connected
    assert watcher.changes() == [("fuzz", "online")]  # no broadcast for any of them
    newcomer = srv.client()
    newcomer.emit("userOnline", {"userId": 77})
    watcher.wait_change(77, "online")
    assert {u["userId"] for u in watcher.online_list()} == {"fuzz", 77}


MALFORMED_FRAMES = [
    "42[]",
    "42{}",
    '42"x"',
    "42[null]",
    "42[5,{}]",
    '42["userOnline"',
    '42["userOnline",{"userId":1}',
    "4",
    "4x",
    "42" + "[" * 5000,
    "42" + json.dumps(["userOnline", {"userId": 1, "nested": [[[[[[[]]]]]]]}])[:-1],
    "4" + "\x00\xff",
]
NOT_ENGINE_IO = ["\x00\xff", "", "9", "x"]  # not even an engine.io packet


def test_malformed_frames_leave_the_server_serving(fuzzed):
    """Frames that are not Socket.IO events: python-socketio drops them (there is no
    event to answer), the sender and everyone else are still served, nothing changed.
    Frames that are not even engine.io make engine.io drop that sender alone."""
    srv, watcher, _ = fuzzed
    before = srv.snapshot()

    async def send_garbage() -> str:
        url = srv.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.receive_str()
            await ws.send_str("40")
            await ws.receive_str()
            for frame in MALFORMED_FRAMES:
                await ws.send_str(frame)
            await ws.send_str('42["getOnlineUsers"]')
            while True:  # the sender is still answered after all that
                message = await asyncio.wait_for(ws.receive_str(), 10)
                if message.startswith('42["onlineUsersList"'):
                    return message

    async def send_noise(frame: str) -> None:
        url = srv.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.receive_str()
            await ws.send_str("40")
            await ws.receive_str()
            await ws.send_str(frame)

    for frame in NOT_ENGINE_IO:  # engine.io gives up on such a sender; the rest goes on
        srv.loop.run(send_noise(frame), timeout=30)
    answer = srv.loop.run(send_garbage(), timeout=30)
    ids = [(u["userId"], u["status"]) for u in json.loads(answer[2:])[1]]
    assert ids == [(u["userId"], u["status"]) for u in watcher.online_list()]
    assert srv.snapshot() == before
    newcomer = srv.client()
    newcomer.emit("userOnline", {"userId": 78})
    watcher.wait_change(78, "online")
