"""The guide's payloads: what is accepted, what is refused, what goes out."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from presence_core import protocol
from presence_core.protocol import ProtocolError


def test_user_online_keeps_the_wire_type_and_gives_the_stored_key():
    event = protocol.parse_user_online({"userId": 123, "userType": "agent", "userName": "Jo"})
    assert event.user_id == 123 and event.key == "123"
    assert (event.user_type, event.user_name, event.team) == ("agent", "Jo", None)
    event = protocol.parse_user_online({"userId": "u-7", "team": " Support "})
    assert event.user_id == "u-7" and event.key == "u-7" and event.team == "Support"


def test_user_online_without_id_uses_the_token_identity():
    assert protocol.parse_user_online(None, default_id=5).key == "5"
    assert protocol.parse_user_online({"userName": "A"}, default_id="x").user_id == "x"


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "123",
        [123],
        42,
        {},
        {"userId": None},
        {"userId": ""},
        {"userId": "   "},
        {"userId": True},
        {"userId": 1.5},
        {"userId": [1]},
        {"userId": {"a": 1}},
        {"userId": "x" * 100_000},
        {"userId": 1, "userName": 5},
        {"userId": 1, "userType": ["agent"]},
        {"userId": 1, "team": "t" * 300},
    ],
)
def test_bad_user_online_is_refused_with_a_message(payload):
    with pytest.raises(ProtocolError) as info:
        protocol.parse_user_online(payload)
    assert "userOnline" in str(info.value)
    assert len(str(info.value)) < 200


def test_float_that_is_an_integer_counts_as_a_number():
    assert protocol.parse_user_offline({"userId": 9.0}).user_id == 9


def test_offline_heartbeat_status():
    assert protocol.parse_user_offline({"userId": 1}).key == "1"
    assert protocol.parse_user_heartbeat({"userId": "a"}).key == "a"
    status = protocol.parse_user_status({"userId": 1, "status": " away "})
    assert status.status == "away" and status.user_id == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"userId": 1},
        {"userId": 1, "status": ""},
        {"userId": 1, "status": 3},
        {"userId": 1, "status": "offline"},
        {"userId": 1, "status": "x" * 65},
        {"userId": 1, "status": "<script>"},
        {"status": "away"},
    ],
)
def test_bad_user_status_is_refused(payload):
    with pytest.raises(ProtocolError):
        protocol.parse_user_status(payload)


def test_get_online_users_carries_nothing():
    assert protocol.parse_get_online_users() is None
    assert protocol.parse_get_online_users({}) is None
    with pytest.raises(ProtocolError):
        protocol.parse_get_online_users({"x": 1})


def test_iso_utc_is_what_javascript_writes():
    moment = datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)
    assert protocol.iso_utc(moment) == "2026-01-02T03:04:05.678Z"
    plus_two = moment.astimezone(timezone(timedelta(hours=2)))
    assert protocol.iso_utc(plus_two) == "2026-01-02T03:04:05.678Z"
    assert protocol.iso_utc(datetime(2026, 1, 2)) == "2026-01-02T00:00:00.000Z"
    assert protocol.to_millis(moment).microsecond == 678_000


def test_outgoing_payloads():
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert protocol.status_changed(1, "offline", moment, "timeout")["reason"] == "timeout"
    assert protocol.status_changed(123, "online", moment) == {
        "userId": 123,
        "status": "online",
        "lastSeen": "2026-01-02T03:04:05.000Z",
    }
    entry = protocol.online_user("7", "away", moment, "agent", "Jo")
    assert entry == {
        "userId": "7",
        "status": "away",
        "lastSeen": "2026-01-02T03:04:05.000Z",
        "userType": "agent",
        "userName": "Jo",
    }
    assert protocol.online_user(1, "online", moment, None, None, "T")["team"] == "T"
    since = protocol.online_user(1, "online", moment, None, None, status_since=moment)
    assert since["statusSince"] == "2026-01-02T03:04:05.000Z" and "team" not in since


def test_parse_status_changed_round_trips_what_the_server_sends():
    moment = protocol.now_millis()
    change = protocol.parse_status_changed(protocol.status_changed(123, "busy", moment))
    assert (change.user_id, change.status, change.last_seen) == ("123", "busy", moment)
    assert change.last_seen_problem is None


def test_parse_status_changed_tells_missing_from_unparseable_last_seen():
    missing = protocol.parse_status_changed({"userId": 1, "status": "online"})
    assert missing.last_seen is None and missing.last_seen_problem == "missing"
    bad = protocol.parse_status_changed({"userId": 1, "status": "online", "lastSeen": "soon"})
    assert bad.last_seen is None and bad.last_seen_problem == "unparseable"
    epoch = protocol.parse_status_changed(
        {"userId": 1, "status": "online", "lastSeen": 1_767_225_600_000}
    )
    assert epoch.last_seen == datetime(2026, 1, 1, tzinfo=UTC)
    naive = protocol.parse_status_changed(
        {"userId": 1, "status": "offline", "lastSeen": "2026-01-01T00:00:00"}
    )
    assert naive.last_seen == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "payload",
    [None, [], "x", {"status": "online"}, {"userId": 1}, {"userId": 1, "status": 5}],
)
def test_parse_status_changed_refuses_garbage(payload):
    with pytest.raises(ProtocolError):
        protocol.parse_status_changed(payload)


def test_parse_online_users():
    moment = protocol.now_millis()
    users = protocol.parse_online_users(
        [
            protocol.online_user(1, "online", moment, "agent", "A", "T1"),
            {"userId": "b", "lastSeen": protocol.iso_utc(moment)},
        ]
    )
    assert [u.user_id for u in users] == ["1", "b"]
    assert users[0].team == "T1" and users[0].user_type == "agent"
    assert users[1].status == "online" and users[1].last_seen == moment
    with pytest.raises(ProtocolError, match=r"\[1\]"):
        protocol.parse_online_users([{"userId": 1}, {"userId": None}])
    assert len(protocol.parse_online_users([{"userId": 1}, 7], skip_bad=True)) == 1
    with pytest.raises(ProtocolError):
        protocol.parse_online_users({"userId": 1})


UNSTORABLE = [
    ("a NUL character", "a\x00b"),
    ("a lone surrogate U+D800", "x\ud800"),
    ("a lone surrogate U+DFFF", "\udfff"),
]


@pytest.mark.parametrize("what, text", UNSTORABLE)
@pytest.mark.parametrize("field", ["userId", "userName", "userType", "team"])
def test_what_postgres_would_refuse_is_refused_in_every_field(field, what, text):
    payload = {"userId": 1, field: text}
    what = re.escape(what)
    with pytest.raises(ProtocolError, match=what) as info:
        protocol.parse_user_online(payload)
    assert field in str(info.value) and "userOnline" in str(info.value)
    if field == "userId":
        for parse in (protocol.parse_user_offline, protocol.parse_user_heartbeat):
            with pytest.raises(ProtocolError, match=what):
                parse(payload)
        with pytest.raises(ProtocolError, match=what):
            protocol.parse_user_status({"userId": text, "status": "away"})
        with pytest.raises(ProtocolError, match=what):  # the listener's side too
            protocol.parse_status_changed({"userId": text, "status": "online"})
        with pytest.raises(ProtocolError, match=what):
            protocol.parse_online_users([{"userId": text}])


@pytest.mark.parametrize("_what, text", UNSTORABLE)
def test_statuses_with_unstorable_characters_are_refused(_what, text):
    with pytest.raises(ProtocolError):
        protocol.parse_user_status({"userId": 1, "status": "away" + text})
    with pytest.raises(ProtocolError):
        protocol.parse_status_changed({"userId": 1, "status": text})


def test_limits_and_types_live_here():
    assert protocol.user_id_text(123) == "123" and protocol.user_id_text("u") == "u"
    assert protocol.user_id_text("x" * protocol.MAX_ID) == "x" * protocol.MAX_ID
    for bad in ["x" * (protocol.MAX_ID + 1), 10**protocol.MAX_ID, "", " ", True, 1.5, None, [1]]:
        with pytest.raises(ProtocolError):  # a ValueError too, for callers that catch that
            protocol.user_id_text(bad)
    assert protocol.check_text(" Ann ", "userName", "e") == "Ann"
    with pytest.raises(ProtocolError, match="at most 256"):
        protocol.check_text("n" * 257, "userName", "e")
    with pytest.raises(ProtocolError, match="must be a string"):
        protocol.check_text(5, "team", "e")
    assert set(protocol.EVENTS) == set(protocol.CLIENT_EVENTS) | set(protocol.SERVER_EVENTS)
    assert "userStatusChanged" in protocol.SERVER_EVENTS and "userOnline" in protocol.CLIENT_EVENTS


def test_names_a_server_sends_are_made_storable_or_dropped():
    [entry] = protocol.parse_online_users(
        [{"userId": 1, "userName": "a\x00b", "userType": "\ud800", "team": " T "}]
    )
    assert (entry.user_name, entry.user_type, entry.team) == (None, None, "T")
    change = protocol.parse_status_changed({"userId": 1, "status": "online", "reason": "r" * 100})
    assert change.reason == "r" * protocol.MAX_REASON
    assert (
        protocol.parse_status_changed({"userId": 1, "status": "x", "reason": "\x00"}).reason is None
    )
