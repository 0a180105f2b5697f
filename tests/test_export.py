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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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
    monkeypatch.setattr(export, "PARSE_BLOCK_BYTES", 300)
    monkeypatch.setattr(export, "ROW_GROUP_ROWS", 2)
    path = tmp_path / "t.parquet"
    path.write_bytes(b"".join(stream_export(history, "transitions", "parquet")))
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_row_groups > 1
    table = parquet.read()
    assert table.column_names == list(export.TRANSITION_COLUMNS)
    assert str(table.schema.field("occurred_at").type) == "timestamp[us, tz=UTC]"
    assert table.column("user_name").to_pylist()[3] == ODD_NAME
    assert table.column("inferred").to_pylist() == [False, False, True, False, False]


def test_an_empty_parquet_export_holds_the_schema():
    """A CSV of a header alone is written without Arrow's streaming CSV reader, which
    aborted a process now and then at its end ('terminate called without an active
    exception', after the file was written: CI once; 1 exit in 6 to 150 in loops of
    small scripts); the abort itself cannot be caused at will, so this checks the
    empty file and :func:`test_after_header_tells_rows_and_gives_every_byte_back`
    the branch that avoids the reader."""
    header = ",".join(export.COLUMNS["transitions"]).encode() + b"\n"
    table = pq.read_table(
        io.BytesIO(b"".join(export._parquet_from_csv(iter([header]), "transitions")))
    )
    assert table.num_rows == 0
    assert table.column_names == list(export.COLUMNS["transitions"])


@given(
    st.lists(
        st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"")) | st.just(b"\n"), max_size=8
    )
)
def test_after_header_tells_rows_and_gives_every_byte_back(chunks):
    has_rows, again = export._after_header(iter(chunks))
    whole = b"".join(chunks)
    assert b"".join(again) == whole
    assert has_rows == (b"\n" in whole and len(whole) > whole.index(b"\n") + 1)


def test_parquet_of_a_generated_history_holds_every_row(engine, monkeypatch, tmp_path):
    """A generated history exported as Parquet through many small parse blocks:
    every row, in order, with its values (row groups are gathered from several
    blocks' batches, so a lost or repeated batch would show)."""
    from presence_core.synthetic import history as generator

    generator.generate_history(engine, 25, 4, seed=2, end=utc(2026, 5, 8), rollups=False)
    monkeypatch.setattr(export, "PARSE_BLOCK_BYTES", 4096)  # about 40 rows
    monkeypatch.setattr(export, "ROW_GROUP_ROWS", 500)
    path = tmp_path / "all.parquet"
    path.write_bytes(b"".join(stream_export(engine, "transitions", "parquet")))
    parquet = pq.ParquetFile(path)
    with engine.connect() as conn:
        expected = conn.execute(
            text(
                "select t.user_id, t.status, t.occurred_at, u.team from presence_transitions t"
                " join presence_users u using (user_id)"
                " order by t.user_id, t.occurred_at, t.status"
            )
        ).all()
    assert len(expected) > 2_000
    assert parquet.metadata.num_rows == len(expected)
    groups = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    assert len(groups) > 3 and all(n >= 500 for n in groups[:-1])
    table = parquet.read(columns=["user_id", "status", "occurred_at", "team"])
    got = list(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    assert got == [tuple(r) for r in expected]


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


# ---------------------------------------------------------------------------
# spreadsheet formulas (OWASP CSV injection)

FORMULAS = {
    "u1": ('=HYPERLINK("http://evil.example","click")', "agent", "red"),
    "u2": ("Plain", "+cmd|' /C calc'!A0", "red"),
    "u3": ("Team lead", "agent", "@SUM(1+1)*cmd|' /C calc'!A0"),
    "u4": ("\tTabbed", "agent", "red"),
    "u5": ("\rReturned", "-2+3", "red"),
    "-6": ("'already quoted", "agent", "=1+1"),
}


@pytest.fixture
def formulas(engine):
    write_batch(
        engine,
        [
            Transition(uid, status, at, at, team=team, user_type=kind, user_name=name, reason=why)
            for uid, (name, kind, team) in FORMULAS.items()
            for status, at, why in (
                ("online", utc(2026, 5, 4, 9), "=cmd"),
                ("offline", utc(2026, 5, 4, 10), "-timeout"),
            )
        ],
    )
    return engine


def _safe(value: str) -> str:
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def test_csv_cells_that_start_a_formula_are_neutralised(formulas):
    rows = read_csv(formulas, "transitions")
    assert len(rows) == 2 * len(FORMULAS)
    for row in rows:
        name, kind, team = FORMULAS[row["user_id"].removeprefix("'")]
        assert row["user_name"] == _safe(name)
        assert row["user_type"] == _safe(kind)
        assert row["team"] == _safe(team)
        assert row["reason"] in ("'=cmd", "'-timeout")
        assert row["occurred_at"].startswith("2026-05-04T")  # timestamps untouched
    assert {r["user_id"] for r in rows} == {"u1", "u2", "u3", "u4", "u5", "'-6"}
    names = {r["user_name"] for r in rows}
    assert '\'=HYPERLINK("http://evil.example","click")' in names
    assert "'\tTabbed" in names and "'\rReturned" in names
    assert "'already quoted" in names  # a leading quote is not a formula
    # every text column of every dataset, no cell a spreadsheet would run
    for dataset in export.DATASETS:
        for row in read_csv(formulas, dataset, ExportFilters(tz="UTC")):
            for column in export.text_columns(dataset):
                assert row[column][:1] not in ("=", "+", "-", "@", "\t", "\r"), (dataset, row)
    # numbers stay numbers
    daily = read_csv(formulas, "daily", ExportFilters(tz="UTC"))
    assert {r["online_seconds"] for r in daily} == {"3600"}
    assert {r["sessions"] for r in daily} == {"1"}


def test_parquet_and_jsonl_keep_raw_values(formulas, tmp_path):
    lines = b"".join(stream_export(formulas, "sessions", "jsonl")).decode().splitlines()
    assert {json.loads(x)["user_name"] for x in lines} == {v[0] for v in FORMULAS.values()}
    out = tmp_path / "t.parquet"
    out.write_bytes(b"".join(stream_export(formulas, "transitions", "parquet")))
    table = pq.read_table(out).to_pydict()
    assert set(table["team"]) == {v[2] for v in FORMULAS.values()}
    assert set(table["user_id"]) == set(FORMULAS)
    assert set(table["reason"]) == {"=cmd", "-timeout"}


def test_cli_and_the_export_page_neutralise_csv(formulas, cli_env):
    done = presence(cli_env, "export", "--dataset", "sessions", "--output", "-")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout.decode(), newline="")))
    assert {r["user_type"] for r in rows} == {_safe(v[1]) for v in FORMULAS.values()}
    from presence_core.dashboard import data

    page = data.export_file(formulas, "transitions", "csv", ExportFilters()).read()
    page_rows = list(csv.DictReader(io.StringIO(page.decode(), newline="")))
    assert {r["team"] for r in page_rows} == {_safe(v[2]) for v in FORMULAS.values()}


_MOMENTS = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)
).map(lambda d: d.replace(tzinfo=UTC).isoformat())
_SPECIAL = [
    "infinity",
    "-infinity",
    "0044-03-15 12:00:00+00 BC",
    "0001-12-31 23:00:00+00 BC",
    "10000-01-01 00:00:00+00",
    "0001-01-01 00:00:00+00",
]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(moments=st.lists(_MOMENTS, max_size=40))
def test_timestamps_are_written_as_json_writes_them(database_url, moments):
    """The cheap cast of iso_text equals to_json's text for every instant, and the
    other values keep to_json's form, whatever the client's own date style (the
    database only answers: sharing it between examples is safe)."""
    from sqlalchemy import create_engine

    engine = create_engine(database_url, connect_args={"options": "-c datestyle=SQL,DMY"})
    try:
        values = moments + _SPECIAL + [None]
        sql = (
            f"copy (select {export.iso_text('x')}, to_json(x) #>> '{{}}'"
            " from unnest(cast(cast(:xs as text[]) as timestamptz[])) as t(x))"
            " to stdout with (format csv)"
        )
        out = b"".join(export._copy_out(engine, sql, {"xs": values})).decode()
        rows = list(csv.reader(io.StringIO(out)))
        assert len(rows) == len(values)
        assert all(ours == theirs for ours, theirs in rows), rows
    finally:
        engine.dispose()
