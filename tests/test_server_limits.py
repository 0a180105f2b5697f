"""The server's limits on their own: per-user change buckets, rate-limited log lines,
and the connection guard's decisions (on socket pairs, with a clock of its own)."""

from __future__ import annotations

import logging
import socket

import pytest

from presence_core.server.guard import (
    CLOSING_RESERVE,
    ConnectionGuard,
    connection_cap,
    descriptor_cap,
)
from presence_core.server.ratelimit import ChangeLimiter, LogThrottle


def test_a_user_may_burst_then_change_at_the_rate():
    limiter = ChangeLimiter(rate=5, burst=3)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 0.0)  # another user has a bucket of their own
    assert not limiter.allow("a", 0.1)  # half a token back
    assert limiter.allow("a", 0.2)  # one token back
    assert not limiter.allow("a", 0.2)
    assert [limiter.allow("a", 10.0) for _ in range(4)] == [True, True, True, False]  # full again
    assert "5 status changes a second" in limiter.describe()
    with pytest.raises(ValueError):
        ChangeLimiter(rate=0, burst=1)


def test_idle_buckets_are_forgotten_without_changing_answers():
    limiter = ChangeLimiter(rate=1, burst=1)
    for number in range(25_000):
        assert limiter.allow(f"u{number}", float(number))
    assert len(limiter._buckets) < 25_000
    assert not limiter.allow("u24999", 24_999.5)  # a recent bucket is kept


def test_log_throttle_says_the_first_then_sums_up(caplog):
    now = [0.0]
    throttle = LogThrottle(
        logging.getLogger("t"), "malformed frames", interval=60, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="t"):
        for number in range(1000):
            now[0] = number * 0.1  # 100 s of junk, ten a second
            throttle.hit(f"frame {number}")
        throttle.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and throttle.total == 1000
    assert lines[0].startswith("malformed frames: frame 0; more are counted")
    assert lines[1].startswith("600 malformed frames in the last 60 s (last: frame 600)")
    assert lines[2].startswith("399 malformed frames in the last 40 s (last: frame 999)")
    now[0] = 10_000.0  # after a quiet hour, the first again in full
    with caplog.at_level(logging.WARNING, logger="t"):
        throttle.hit("again")
    assert caplog.records[-1].getMessage().startswith("malformed frames: again;")


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


def test_guard_lets_the_oldest_waiting_connection_make_way():
    now = [0.0]
    guard = ConnectionGuard(
        max_connections=3, max_per_address=2, header_timeout=10, idle_timeout=5,
        clock=lambda: now[0],
    )  # fmt: skip
    pairs = [_pair() for _ in range(6)]
    try:
        ours = [server for server, _ in pairs]
        assert guard.admit(ours[0], ("10.0.0.1", 1))
        assert guard.admit(ours[1], ("10.0.0.1", 2))
        guard.started(("10.0.0.1", 2))  # in use
        # the address is at its cap: its oldest waiting connection (port 1) makes way
        assert guard.admit(ours[2], ("10.0.0.1", 3))
        assert pairs[0][1].recv(10) == b""  # closed under the client
        assert guard.admit(ours[3], ("10.0.0.2", 1))
        # the server is full: the oldest waiting one anywhere (10.0.0.1:3) makes way
        assert guard.admit(ours[4], ("10.0.0.3", 1))
        assert guard.evicted == 2 and len(guard) == 3
        guard.started(("10.0.0.2", 1))
        guard.started(("10.0.0.3", 1))
        # full of connections in use: the newcomer is refused with a 503
        assert not guard.admit(ours[5], ("10.0.0.4", 1))
        assert pairs[5][1].recv(100).startswith(b"HTTP/1.1 503")
        assert guard.refused == 1
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_guard_times_out_waiting_connections_only():
    now = [0.0]
    guard = ConnectionGuard(
        max_connections=10, max_per_address=0, header_timeout=10, idle_timeout=2,
        clock=lambda: now[0],
    )  # fmt: skip
    pairs = [_pair() for _ in range(3)]
    try:
        for port, (server, _) in enumerate(pairs):
            assert guard.admit(server, ("10.0.0.1", port))
        guard.started(("10.0.0.1", 1))  # a request in progress
        guard.started(("10.0.0.1", 2))
        now[0] = 5.0
        guard.finished(("10.0.0.1", 2))  # answered: kept alive, idle from now
        now[0] = 6.9
        guard.sweep()
        assert guard.timed_out == 0
        now[0] = 7.0
        guard.sweep()  # idle for its 2 s
        assert guard.timed_out == 1 and pairs[2][1].recv(10) == b""
        now[0] = 9.9
        guard.sweep()
        assert guard.timed_out == 1
        now[0] = 10.0
        guard.sweep()  # no request in its 10 s
        assert guard.timed_out == 2 and len(guard) == 1 and pairs[0][1].recv(10) == b""
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_caps_leave_descriptors_for_what_is_not_a_client():
    assert connection_cap(None, 1024) == (1024 - CLOSING_RESERVE - 64, None)
    cap, why = connection_cap(5000, 1024)
    assert cap < 1024 and "ulimit -n" in why
    assert connection_cap(100, 1024) == (100, None)
    # out of descriptors with 300 held: below that by the closing reserve
    assert descriptor_cap(800, 300, limit=1024) == 300 - CLOSING_RESERVE - 8
    assert descriptor_cap(800, 50, limit=1024) == 1
