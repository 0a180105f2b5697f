"""Export presence history for analysts: transitions, sessions or a daily summary.

Columns are DESIGN's, in order; timestamps are ISO-8601 with offset (UTC).
Rows stream from PostgreSQL to the output (COPY TO; for Parquet the CSV stream is
parsed by Arrow in small blocks, gathered into row groups), so memory stays flat however
many rows there are. Users who hide their last seen are left out unless
``ExportFilters.include_hidden`` (the CLI's --include-hidden, an administrator on
the dashboard). CSV cells a spreadsheet would run as a formula are neutralised.
Used by ``presence export`` (presence_core/commands/export.py) and the Export page.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, text
from sqlalchemy.dialects import postgresql

from presence_core import analytics
from presence_core.errors import PresenceError

DATASETS = ("transitions", "sessions", "daily")
FORMATS = ("csv", "parquet", "jsonl")

TRANSITION_COLUMNS = (
    "user_id",
    "user_type",
    "user_name",
    "team",
    "status",
    "occurred_at",
    "received_at",
    "inferred",
    "reason",
)
COLUMNS: dict[str, tuple[str, ...]] = {
    "transitions": TRANSITION_COLUMNS,
    "sessions": analytics.SESSION_COLUMNS,
    "daily": analytics.DAILY_COLUMNS,
}

_TIMESTAMPS = {
    "occurred_at",
    "received_at",
    "started_at",
    "ended_at",
    "first_online",
    "last_offline",
}
# Parquet column types (others are strings); names of pyarrow type factories
_TYPES: dict[str, tuple[str, ...]] = {
    "occurred_at": ("timestamp", "us", "UTC"),
    "received_at": ("timestamp", "us", "UTC"),
    "started_at": ("timestamp", "us", "UTC"),
    "ended_at": ("timestamp", "us", "UTC"),
    "first_online": ("timestamp", "us", "UTC"),
    "last_offline": ("timestamp", "us", "UTC"),
    "inferred": ("bool_",),
    "open": ("bool_",),
    "duration_seconds": ("float64",),
    "online_seconds": ("float64",),
    "availability_pct": ("float64",),
    "sessions": ("int64",),
    "date": ("date32",),
}

ROW_GROUP_ROWS = 65_536  # rows per Parquet row group
# CSV bytes Arrow parses at a time: its reader reads up to 32 blocks ahead on a
# thread of its own, outside its memory pool's accounting, so 8 MB blocks cost
# about 300 MB of RSS (measured); 1 MB blocks about 35 MB more than 256 kB, at the
# same CPU. Row groups are made of many blocks' batches (ROW_GROUP_ROWS) so the
# file does not change with it. A row must fit in a block (Arrow refuses one that
# straddles two): the protocol caps every text at 256 characters, a few kB a row.
PARSE_BLOCK_BYTES = 1 << 18
CHUNK_BYTES = 1 << 18
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_TRANSITIONS_SQL = """
with sel_users as (
    select u.user_id, u.user_type, u.user_name, u.team from presence_users u
    where (cast(:user_ids as text[]) is null or u.user_id = any(cast(:user_ids as text[])))
      and (cast(:user_type as text) is null or u.user_type = cast(:user_type as text))
      and (cast(:team as text) is null or u.team = cast(:team as text))
      and (cast(:include_hidden as boolean) or not u.hide_last_seen)
)
select t.user_id, u.user_type, u.user_name, u.team, t.status, t.occurred_at, t.received_at,
       t.inferred, t.reason
from presence_transitions t join sel_users u on u.user_id = t.user_id
where t.occurred_at >= cast(:start as timestamptz) and t.occurred_at < cast(:end as timestamptz)
order by t.user_id, t.occurred_at, t.status"""


@dataclass(frozen=True)
class ExportFilters:
    """What to export. ``start``/``end``: aware datetimes, or dates meaning whole
    local days in ``tz`` (``end`` inclusive); None means from the beginning / up
    to now. ``tz`` is also the time zone of the ``daily`` dataset's days."""

    start: datetime | date | None = None
    end: datetime | date | None = None
    user_ids: tuple[str, ...] | None = None
    user_type: str | None = None
    team: str | None = None
    include_hidden: bool = False
    tz: str | ZoneInfo = "UTC"
    available_statuses: tuple[str, ...] = field(default=analytics.DEFAULT_AVAILABLE)


def _query(engine: Engine, dataset: str, filters: ExportFilters) -> tuple[str, dict[str, Any]]:
    """The dataset's SELECT (DESIGN's columns in order) and its parameters. For
    ``daily``, whole past local days come from the per-user day cache, which this
    fills first for the days it lacks (:func:`analytics.daily_summary_query`)."""
    params = analytics.period_params(
        filters.start or EPOCH,
        filters.end,
        filters.tz,
        filters.user_ids,
        filters.user_type,
        filters.team,
        filters.include_hidden,
    )
    if dataset == "transitions":
        return _TRANSITIONS_SQL, params
    if dataset == "sessions":
        return analytics.sessions_sql(), params
    if dataset == "daily":
        params["avail"] = list(filters.available_statuses)
        return analytics.daily_summary_query(engine, params)
    raise PresenceError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


# Characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_CODES = ", ".join(str(ord(c)) for c in FORMULA_STARTS)


def text_columns(dataset: str) -> set[str]:
    """The dataset's free-text columns (ids, names, teams, statuses, reasons): not
    timestamps, dates, numbers or booleans."""
    return {c for c in COLUMNS[dataset] if c not in _TYPES}


def iso_text(value: str) -> str:
    """SQL for the timestamptz ``value`` as ISO-8601 text, the way JSON writes it
    (``2026-05-04T12:00:00.25+00:00``), in a session set to UTC and ISO dates (as
    :func:`_copy_out` sets it).

    ``to_json(value) #>> '{}'`` says it for every value, but costs about twice the
    text cast, which was a fifth of a year's ``daily`` export (two timestamps a row).
    In UTC and ISO style the cast differs from JSON only by the ``T`` and the
    offset's minutes, for years 1 to 9999; other values (infinities, BC, years past
    9999) keep JSON's form, as do nulls."""
    return (
        f"case when {value} between timestamptz '0001-01-01 00:00:00+00'"
        f" and timestamptz '9999-12-31 23:59:59.999999+00'"
        f" then replace({value}::text, ' ', 'T') || chr(58) || '00'"  # ':00' reads as a parameter
        f" else to_json({value}) #>> '{{}}' end"
    )


def _text_select(dataset: str, sql: str, words: bool, neutralise: bool = False) -> str:
    """The query with timestamps as ISO-8601 text (as JSON writes them); with
    ``words``, booleans as ``true``/``false``; with ``neutralise``, a text cell that
    begins with one of :data:`FORMULA_STARTS` gets a leading ``'`` so that a
    spreadsheet shows it instead of running it (numbers and timestamps are not
    text cells: a negative number stays a number). Done in COPY's select, so the
    stream is unchanged: no row is held in Python."""
    exprs = []
    neutralised = text_columns(dataset) if neutralise else set()
    for column in COLUMNS[dataset]:
        if words and column in ("inferred", "open"):
            exprs.append(f"q.{column}::text as {column}")
        elif column in _TIMESTAMPS:
            exprs.append(f"{iso_text('q.' + column)} as {column}")
        elif column == "date":
            exprs.append("q.date::text as date")
        elif column in neutralised:
            exprs.append(
                f"case when ascii(q.{column}) in ({_FORMULA_CODES})"
                f" then chr(39) || q.{column} else q.{column} end as {column}"
            )
        else:
            exprs.append(f"q.{column}")
    return f"select {', '.join(exprs)} from ({sql}) q"


def _pyformat(sql: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``:name`` parameters turned into psycopg's ``%(name)s`` (values stay bound)."""
    clause = text(sql)
    used = {k: v for k, v in params.items() if k in clause._bindparams}
    compiled = clause.bindparams(**used).compile(dialect=postgresql.psycopg.dialect())
    return compiled.string, compiled.params


def stream_export(
    engine: Engine, dataset: str, fmt: str, filters: ExportFilters | None = None
) -> Iterator[bytes]:
    """The export as a stream of byte chunks (a whole file: CSV with a header line,
    JSON lines, or a Parquet file written in row groups). Memory stays bounded.
    CSV cells a spreadsheet would run as a formula are neutralised (see
    :func:`_text_select`); Parquet and JSON lines keep the raw values."""
    if fmt not in FORMATS:
        raise PresenceError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    filters = filters or ExportFilters()
    sql, params = _query(engine, dataset, filters)
    if fmt == "parquet":
        return _parquet(engine, dataset, sql, params)
    select = _text_select(dataset, sql, words=fmt == "csv", neutralise=fmt == "csv")
    if fmt == "csv":
        copy = f"copy ({select}) to stdout with (format csv, header true)"
    else:
        # JSON never holds raw control characters, so CSV with \x01 quotes and a
        # \x02 delimiter passes each JSON object through untouched.
        copy = (
            f"copy (select row_to_json(j) from ({select}) j) to stdout "
            "with (format csv, quote e'\\x01', delimiter e'\\x02')"
        )
    return _copy_out(engine, copy, params)


def _copy_out(engine: Engine, sql: str, params: dict[str, Any]) -> Iterator[bytes]:
    statement, values = _pyformat(sql, params)
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        with raw.cursor() as cursor:
            # iso_text's cast relies on both
            cursor.execute("set time zone 'UTC'")
            cursor.execute("set datestyle = 'ISO'")
            buffer: list[bytes] = []
            size = 0
            with cursor.copy(statement, values) as copy:
                for data in copy:
                    buffer.append(bytes(data))
                    size += len(data)
                    if size >= CHUNK_BYTES:
                        yield b"".join(buffer)
                        buffer, size = [], 0
            if buffer:
                yield b"".join(buffer)
        conn.rollback()


class _Sink(io.RawIOBase):
    """A write-only file that keeps what is written until drained."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class _Source(io.RawIOBase):
    """A read-only file over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _parquet(engine: Engine, dataset: str, sql: str, params: dict[str, Any]) -> Iterator[bytes]:
    """CSV from COPY TO, parsed by Arrow in blocks, written as one row group per block."""
    copy = (
        f"copy ({_text_select(dataset, sql, words=True)}) to stdout with (format csv, header true)"
    )
    return _parquet_from_csv(_copy_out(engine, copy, params), dataset)


def _after_header(chunks: Iterator[bytes]) -> tuple[bool, Iterator[bytes]]:
    """Whether a CSV's chunks hold anything after its header line, and the chunks
    again from the first (those read to tell are put back in front)."""
    seen: list[bytes] = []
    head = b""
    for chunk in chunks:
        seen.append(chunk)
        head += chunk
        end = head.find(b"\n")
        if end != -1 and len(head) > end + 1:
            return True, itertools.chain(seen, chunks)
    return False, iter(seen)


def _parquet_from_csv(chunks: Iterator[bytes], dataset: str) -> Iterator[bytes]:
    """The dataset's CSV (header line first, as COPY writes it) as a Parquet file, in
    byte chunks: Arrow parses it in small blocks (see :data:`PARSE_BLOCK_BYTES`)
    whose batches are gathered into row groups of :data:`ROW_GROUP_ROWS` rows."""
    import pyarrow as pa  # only Parquet needs Arrow: imported here
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    columns = COLUMNS[dataset]

    def arrow_type(column: str):
        factory, *args = _TYPES.get(column, ("string",))
        if factory == "timestamp":
            return pa.timestamp(args[0], tz=args[1])
        return getattr(pa, factory)()

    schema = pa.schema([(c, arrow_type(c)) for c in columns])
    sink = _Sink()
    has_rows, chunks = _after_header(chunks)
    if not has_rows:
        # Arrow's streaming reader, given a CSV of a header alone, may abort the whole
        # process ('terminate called without an active exception': its read-ahead
        # thread outlives it; pyarrow 21 and 26 alike, 1 exit in 6 to 20 here): an
        # empty export writes its schema without it
        with pq.ParquetWriter(sink, schema, compression="zstd"):
            pass
        yield sink.drain()
        return
    reader = pacsv.open_csv(
        io.BufferedReader(_Source(chunks), buffer_size=1 << 20),
        read_options=pacsv.ReadOptions(block_size=PARSE_BLOCK_BYTES, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={f.name: f.type for f in schema},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["true"],
            false_values=["false"],
        ),
    )
    pending: list = []
    count = 0
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for batch in reader:
            pending.append(batch.select(list(columns)))
            count += batch.num_rows
            if count >= ROW_GROUP_ROWS:
                group = pa.Table.from_batches(pending, schema)
                writer.write_table(group, row_group_size=count)
                pending, count = [], 0
                yield sink.drain()
        if pending:
            writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=count)
    yield sink.drain()
