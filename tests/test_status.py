"""presence_core.status: last-seen text, colors, parsing and display_status."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from presence_core.status import (
    AMBER,
    GRAY,
    GREEN,
    display_status,
    format_last_seen,
    is_online,
    is_present,
    parse_timestamp,
    status_color,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_env_tz(monkeypatch):
    monkeypatch.delenv("PRESENCE_TZ", raising=False)


def ago(**kwargs) -> datetime:
    return NOW - timedelta(**kwargs)


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(0), "online"),
        (timedelta(seconds=29), "online"),
        (timedelta(seconds=29, microseconds=999_999), "online"),
        (timedelta(seconds=30), "just now"),
        (timedelta(seconds=59), "just now"),
        (timedelta(seconds=60), "1m ago"),
        (timedelta(seconds=119), "1m ago"),
        (timedelta(minutes=59, seconds=59), "59m ago"),
        (timedelta(minutes=60), "1h ago"),
        (timedelta(hours=23, minutes=59), "23h ago"),
        (timedelta(hours=24), "yesterday"),
        (timedelta(hours=47, minutes=59), "yesterday"),
        (timedelta(hours=48), "2d ago"),
        (timedelta(days=6, hours=23), "6d ago"),
        (timedelta(days=7), "1w ago"),
        (timedelta(days=13, hours=23), "1w ago"),
        (timedelta(days=14), "2w ago"),
        (timedelta(days=29), "4w ago"),
        (timedelta(days=29, hours=23, minutes=59, seconds=59), "4w ago"),
        (timedelta(days=30), "1/30/2026"),
        (timedelta(days=400), "1/25/2025"),
    ],
)
def test_format_last_seen_boundaries(delta, expected):
    assert format_last_seen(NOW - delta, now=NOW) == expected


def test_none_is_offline():
    assert format_last_seen(None, now=NOW) == "offline"
    assert status_color(None, now=NOW) == GRAY
    assert is_online(None, now=NOW) is False


@pytest.mark.parametrize(
    "last_seen",
    [
        datetime(2026, 3, 1, 11, 55),  # naive = UTC
        datetime(2026, 3, 1, 11, 55, tzinfo=UTC),
        datetime(2026, 3, 1, 13, 55, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 3, 1, 6, 55, tzinfo=ZoneInfo("America/New_York")),
        "2026-03-01T11:55:00Z",
        "2026-03-01T11:55:00",
        "2026-03-01T11:55:00+00:00",
        "2026-03-01T13:55:00+02:00",
        "2026-03-01T06:55:00-05:00",
        "2026-03-01T11:55:00.000Z",
    ],
)
def test_input_forms_agree(last_seen):
    assert format_last_seen(last_seen, now=NOW) == "5m ago"
    assert parse_timestamp(last_seen) == datetime(2026, 3, 1, 11, 55, tzinfo=UTC)


@pytest.mark.parametrize(
    "now",
    [
        NOW,
        datetime(2026, 3, 1, 12, 0),  # naive = UTC
        datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        "2026-03-01T12:00:00Z",
    ],
)
def test_now_forms_agree(now):
    assert format_last_seen("2026-03-01T09:00:00Z", now=now) == "3h ago"


def test_offset_string_equals_utc():
    assert parse_timestamp("2026-01-01T12:00:00+02:00") == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert parse_timestamp("2026-01-01T10:00:00Z") == datetime(2026, 1, 1, 10, tzinfo=UTC)


def test_parse_timestamp_returns_aware_utc():
    parsed = parse_timestamp(datetime(2026, 1, 1, 12, 0, tzinfo=ZoneInfo("Europe/Paris")))
    assert parsed.tzinfo is UTC
    assert parsed == datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    assert parse_timestamp(datetime(2026, 1, 1, 12, 0)).tzinfo is UTC
    assert parse_timestamp(None) is None


@pytest.mark.parametrize(
    "future", [NOW + timedelta(seconds=1), NOW + timedelta(days=3), "2030-01-01T00:00:00Z"]
)
def test_future_counts_as_now(future):
    assert format_last_seen(future, now=NOW) == "online"
    assert status_color(future, now=NOW) == GREEN
    assert is_online(future, now=NOW) is True


def test_default_now_is_current_time():
    assert format_last_seen(datetime.now(UTC)) == "online"
    assert format_last_seen(datetime.now(UTC) - timedelta(hours=3)) == "3h ago"
    assert is_online(datetime.now(UTC).replace(tzinfo=None))


# 2026-01-04 23:30 UTC is 18:30 on Jan 4 in New York and 12:30 on Jan 5 in Auckland.
OLD = datetime(2026, 1, 4, 23, 30, tzinfo=UTC)
LATER = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        (None, "1/4/2026"),
        ("UTC", "1/4/2026"),
        ("America/New_York", "1/4/2026"),
        ("Pacific/Auckland", "1/5/2026"),
        (ZoneInfo("Pacific/Auckland"), "1/5/2026"),
    ],
)
def test_date_in_display_zone(tz, expected):
    assert format_last_seen(OLD, now=LATER, tz=tz) == expected


def test_date_moves_back_a_day_west_of_utc():
    early = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)  # 22:00 on Jan 4 in New York
    assert format_last_seen(early, now=LATER, tz="UTC") == "1/5/2026"
    assert format_last_seen(early, now=LATER, tz="America/New_York") == "1/4/2026"


def test_date_has_no_zero_padding_and_full_year():
    assert format_last_seen("2024-12-25T12:00:00Z", now=LATER) == "12/25/2024"
    assert format_last_seen("2025-09-03T12:00:00Z", now=LATER) == "9/3/2025"


def test_presence_tz_env_is_honoured(monkeypatch):
    monkeypatch.setenv("PRESENCE_TZ", "Pacific/Auckland")
    assert format_last_seen(OLD, now=LATER) == "1/5/2026"
    assert format_last_seen(OLD, now=LATER, tz="UTC") == "1/4/2026"  # parameter wins


def test_empty_presence_tz_means_utc(monkeypatch):
    monkeypatch.setenv("PRESENCE_TZ", "")
    assert format_last_seen(OLD, now=LATER) == "1/4/2026"


@pytest.mark.parametrize("name", ["Not/AZone", "America", "", "../etc/passwd"])
def test_invalid_zone_name_raises(name):
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        format_last_seen(OLD, now=LATER, tz=name)


def test_invalid_env_zone_raises(monkeypatch):
    monkeypatch.setenv("PRESENCE_TZ", "Mars/Olympus")
    with pytest.raises(ValueError, match="Mars/Olympus"):
        format_last_seen(OLD, now=LATER)


@pytest.mark.parametrize(
    "garbage",
    ["yesterday", "", "2026-13-01T00:00:00Z", "12/25/2024", 1700000000, 1.5, [2026, 1, 1], True],
)
@pytest.mark.parametrize("func", [format_last_seen, status_color, is_online, parse_timestamp])
def test_garbage_raises_value_error_naming_it(func, garbage):
    with pytest.raises(ValueError, match=re.escape(repr(garbage))):
        func(garbage)


def test_garbage_now_raises():
    with pytest.raises(ValueError, match="'soon'"):
        format_last_seen(NOW, now="soon")


def test_long_garbage_is_truncated_in_message():
    with pytest.raises(ValueError) as info:
        parse_timestamp("x" * 500)
    assert "xxxx" in str(info.value)
    assert len(str(info.value)) < 140


@pytest.mark.parametrize(
    ("delta", "color", "online"),
    [
        (timedelta(0), GREEN, True),
        (timedelta(seconds=29), GREEN, True),
        (timedelta(seconds=30), AMBER, False),
        (timedelta(minutes=4, seconds=59), AMBER, False),
        (timedelta(minutes=5), GRAY, False),
        (timedelta(days=90), GRAY, False),
    ],
)
def test_colors_and_is_online(delta, color, online):
    assert status_color(NOW - delta, now=NOW) == color
    assert is_online(NOW - delta, now=NOW) is online


def test_color_constants():
    assert (GREEN, AMBER, GRAY) == ("#10b981", "#f59e0b", "#6b7280")


@pytest.mark.parametrize(
    ("status", "present"),
    [("online", True), ("away", True), ("busy", True), ("offline", False), (None, False)],
)
def test_is_present(status, present):
    assert is_present(status) is present


@pytest.mark.parametrize(
    ("status", "last_seen", "expected"),
    [
        ("online", ago(seconds=5), ("online", GREEN)),
        ("online", ago(hours=1), ("online", GREEN)),  # online for an hour: never "1h ago"
        ("online", ago(days=45), ("online", GREEN)),
        ("online", None, ("online", GREEN)),
        ("away", ago(seconds=5), ("away", AMBER)),
        ("away", ago(hours=3), ("away", AMBER)),
        ("busy", ago(minutes=10), ("busy", AMBER)),
        ("offline", ago(seconds=0), ("just now", AMBER)),  # just left: not "online"
        ("offline", ago(seconds=29), ("just now", AMBER)),
        ("offline", ago(seconds=45), ("just now", AMBER)),
        ("offline", ago(minutes=3), ("3m ago", AMBER)),
        ("offline", ago(hours=1), ("1h ago", GRAY)),
        ("offline", NOW + timedelta(minutes=1), ("just now", AMBER)),
        ("offline", None, ("offline", GRAY)),
        (None, ago(seconds=10), ("just now", AMBER)),
        (None, ago(hours=30), ("yesterday", GRAY)),
        (None, None, ("offline", GRAY)),
    ],
)
def test_display_status(status, last_seen, expected):
    assert display_status(status, last_seen, now=NOW) == expected


def test_display_status_offline_date_uses_zone():
    assert display_status("offline", OLD, now=LATER, tz="Pacific/Auckland") == ("1/5/2026", GRAY)


def test_display_status_rejects_garbage_even_when_present():
    with pytest.raises(ValueError, match="'nope'"):
        display_status("online", "nope", now=NOW)


_SHAPES = [
    ("online", re.compile(r"online")),
    ("just now", re.compile(r"just now")),
    ("minutes", re.compile(r"([1-9]|[1-5][0-9])m ago")),
    ("hours", re.compile(r"([1-9]|1[0-9]|2[0-3])h ago")),
    ("yesterday", re.compile(r"yesterday")),
    ("days", re.compile(r"[2-6]d ago")),
    ("weeks", re.compile(r"[1-4]w ago")),
    ("date", re.compile(r"([1-9]|1[0-2])/([1-9]|[12][0-9]|3[01])/[1-9][0-9]*")),
]


def _rank(text: str) -> tuple[int, int]:
    """(category, count within it) for an output of format_last_seen."""
    for rank, (_, pattern) in enumerate(_SHAPES):
        if pattern.fullmatch(text):
            counted = _SHAPES[rank][0] in ("minutes", "hours", "days", "weeks")
            return rank, int(re.match(r"\d+", text).group()) if counted else 0
    raise AssertionError(f"unexpected shape: {text!r}")


_deltas = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3 * 365))


@given(a=_deltas, b=_deltas)
def test_property_shapes_and_monotone(a, b):
    short, long = sorted((a, b))
    text_short = format_last_seen(NOW - short, now=NOW)
    text_long = format_last_seen(NOW - long, now=NOW)
    assert _rank(text_short) <= _rank(text_long)
    order = [GREEN, AMBER, GRAY]
    assert order.index(status_color(NOW - short, now=NOW)) <= order.index(
        status_color(NOW - long, now=NOW)
    )
    assert is_online(NOW - short, now=NOW) == (text_short == "online")
    assert (status_color(NOW - short, now=NOW) == GREEN) == (text_short == "online")
