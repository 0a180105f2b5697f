"""`presence export`: DESIGN's columns, filters, streaming formats, hidden users."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, date, datetime

import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from presence_core import analytics, export
from presence_core.database.storage import Transition, write_batch
from presence_core.errors import PresenceError
from presence_core.export import ExportFilters, stream_export

T = datetime(2026, 5, 4, 9, tzinfo=UTC)
ODD_NAME = 'Zoë "Z" O\'Neil, Jr.\\\nline two\ttab'


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def history(engine):
    rows = [
        ("a", "online", utc(2026, 5, 4, 9), "red", "agent", "Ann", False, None),
        ("a", "away", utc(2026, 5, 4, 12, 0, 0, 250000), "red", "agent", "Ann", False, None),
        ("a", "offline", utc(2026, 5, 4, 17), "red", "agent", "Ann", True, "timeout"),
        ("b", "online", utc(2026, 5, 5, 8), "blue", "admin", ODD_NAME, False, None),
        ("b", "offline", utc(2026, 5, 5, 9), "blue", "admin", ODD_NAME, False, "userOffline"),
        ("h", "online", utc(2026, 5, 4, 10), "red", "agent", "Hidden", False, None),
        ("h", "offline", utc(2026, 5, 4, 11), "red", "agent", "Hidden", False, None),
    ]
    write_batch(
        engine,
        [
            Transition(u, s, t, t, inferred=inf, reason=why, team=team, user_type=ut, user_name=n)
            for u, s, t, team, ut, n, inf, why in rows
        ],
    )
    with engine.begin() as conn:
        conn.execute(text("update presence_users set hide_last_seen = true where user_id = 'h'"))
    return engine


def read_csv(engine, dataset, filters=None):
    data = b"".join(stream_export(engine, dataset, "csv", filters))
    return list(csv.DictReader(io.StringIO(data.decode(), newline="")))


def test_transitions_csv_has_design_columns_iso_timestamps_and_no_hidden_users(history):
    data = b"".join(stream_export(history, "transitions", "csv"))
    reader = csv.reader(io.StringIO(data.decode(), newline=""))
    assert next(reader) == list(export.TRANSITION_COLUMNS)
    rows = [dict(zip(export.TRANSITION_COLUMNS, r, strict=True)) for r in reader]
    assert [r["user_id"] for r in rows] == ["a", "a", "a", "b", "b"]
    assert rows[1]["occurred_at"] == "2026-05-04T12:00:00.25+00:00"
    assert datetime.fromisoformat(rows[1]["occurred_at"]) == utc(2026, 5, 4, 12, 0, 0, 250000)
    assert [r["inferred"] for r in rows[:3]] == ["false", "false", "true"]
    assert rows[2]["reason"] == "timeout"
    assert rows[3]["user_name"] == ODD_NAME
    with_hidden = read_csv(history, "transitions", ExportFilters(include_hidden=True))
    assert {r["user_id"] for r in with_hidden} == {"a", "b", "h"}


def test_jsonl_round_trips_odd_text(history):
    data = b"".join(stream_export(history, "transitions", "jsonl"))
    lines = data.decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 5
    assert list(records[0]) == list(export.TRANSITION_COLUMNS)
    assert records[3]["user_name"] == ODD_NAME
    assert records[2]["inferred"] is True and records[0]["reason"] is None
    assert datetime.fromisoformat(records[0]["occurred_at"]) == utc(2026, 5, 4, 9)


def test_parquet_is_written_in_row_groups_with_types(history, monkeypatch, tmp_path):
    monkeypatch.setattr(export, "ROW_GROUP_BYTES", 300)
    path = tmp_path / "t.parquet"
    path.write_bytes(b"".join(stream_export(history, "transitions", "parquet")))
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_row_groups > 1
    table = parquet.read()
    assert table.column_names == list(export.TRANSITION_COLUMNS)
    assert str(table.schema.field("occurred_at").type) == "timestamp[us, tz=UTC]"
    assert table.column("user_name").to_pylist()[3] == ODD_NAME
    assert table.column("inferred").to_pylist() == [False, False, True, False, False]


def test_sessions_and_daily_match_analytics(history):
    window = ExportFilters(start=date(2026, 5, 4), end=date(2026, 5, 5))
    sessions = read_csv(history, "sessions", window)
    assert list(sessions[0]) == list(analytics.SESSION_COLUMNS)
    assert [(s["user_id"], s["duration_seconds"], s["open"]) for s in sessions] == [
        ("a", "28800", "false"),
        ("b", "3600", "false"),
    ]
    assert sessions[0]["started_at"] == "2026-05-04T09:00:00+00:00"
    daily = read_csv(history, "daily", window)
    assert list(daily[0]) == list(analytics.DAILY_COLUMNS)
    assert [(d["date"], d["user_id"], d["sessions"]) for d in daily] == [
        ("2026-05-04", "a", "1"),
        ("2026-05-05", "b", "1"),
    ]
    frame = analytics.daily_summary(
        history, date(2026, 5, 4), date(2026, 5, 5), include_hidden=False
    )
    assert [float(d["availability_pct"]) for d in daily] == pytest.approx(
        frame["availability_pct"].tolist()
    )
    assert daily[0]["last_offline"] == "2026-05-04T17:00:00+00:00"
    # daily in another zone: New York days
    ny = read_csv(history, "daily", ExportFilters(start=date(2026, 5, 4), tz="America/New_York"))
    assert [d["date"] for d in ny] == ["2026-05-04", "2026-05-05"]


def test_filters(history):
    def ids(**kw):
        return [r["user_id"] for r in read_csv(history, "transitions", ExportFilters(**kw))]

    assert ids(team="blue") == ["b", "b"]
    assert ids(user_type="agent") == ["a", "a", "a"]
    assert ids(user_ids=("b",)) == ["b", "b"]
    assert ids(start=date(2026, 5, 5)) == ["b", "b"]
    assert ids(end=date(2026, 5, 4)) == ["a", "a", "a"]
    assert ids(start=utc(2026, 5, 4, 12), end=utc(2026, 5, 5, 8, 30)) == ["a", "a", "b"]
    with pytest.raises(PresenceError):
        list(stream_export(history, "users", "csv"))
    with pytest.raises(PresenceError):
        list(stream_export(history, "transitions", "xlsx"))


def presence(cli_env, *args):
    return subprocess.run(
        [sys.executable, "-m", "presence_core", *args],
        env=cli_env,
        capture_output=True,
        timeout=120,
    )


def test_cli_streams_to_stdout_and_writes_files(history, cli_env, tmp_path):
    done = presence(
        cli_env, "export", "--dataset", "transitions", "--format", "csv", "--output", "-"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0] == ",".join(export.TRANSITION_COLUMNS)
    jsonl = presence(
        cli_env, "export", "--dataset", "sessions", "--format", "jsonl", "--output", "-",
        "--team", "red", "--include-hidden", "--from", "2026-05-04", "--to", "2026-05-04",
    )  # fmt: skip
    assert jsonl.returncode == 0, jsonl.stderr
    assert [json.loads(x)["user_id"] for x in jsonl.stdout.decode().splitlines()] == ["a", "h"]
    out = tmp_path / "daily.parquet"
    file = presence(
        cli_env, "export", "--dataset", "daily", "--format", "parquet", "--output", str(out),
        "--tz", "America/New_York",
    )  # fmt: skip
    assert file.returncode == 0, file.stderr
    table = pq.read_table(out)
    assert table.column_names == list(analytics.DAILY_COLUMNS)
    assert table.num_rows == 2
    assert not (tmp_path / "daily.parquet.partial").exists()


def test_cli_errors_are_one_line(history, cli_env, tmp_path):
    bad = presence(
        cli_env, "export", "--dataset", "transitions", "--output", "-", "--from", "yesterday"
    )
    assert bad.returncode == 1
    assert bad.stderr.decode().strip().splitlines() == [
        "presence: error: --from 'yesterday' is not a date (2026-05-04) or a timestamp"
        " (2026-05-04T09:00Z)"
    ]
    nowhere = presence(
        cli_env, "export", "--dataset", "transitions", "--output", str(tmp_path / "no" / "x.csv")
    )
    assert nowhere.returncode == 1
    assert nowhere.stderr.decode().startswith("presence: error: cannot write")
    zone = presence(cli_env, "export", "--dataset", "daily", "--output", "-", "--tz", "Nowhere/X")
    assert zone.returncode == 1 and b"unknown time zone" in zone.stderr
