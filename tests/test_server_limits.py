"""The server's pure limits: per-user change buckets and rate-limited log lines."""

from __future__ import annotations

import logging

import pytest

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
