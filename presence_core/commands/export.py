"""`presence export`: the analysts' datasets to a file or stdout (see presence_core.export).

Dates given to --from/--to are whole days in the display time zone (--to
inclusive); `daily` takes its days in that zone too. Users who hide their last
seen are left out unless --include-hidden. A file is written as PATH.partial and
renamed when complete, so a reader never sees half an export. The export reads
from the streaming replica of PRESENCE_READ_DATABASE_URL (or --read-database-url)
when one is configured, so a long export never competes with the writers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time as clock
from collections.abc import Callable, Iterable
from datetime import date, datetime
from pathlib import Path

from presence_core import analytics
from presence_core.commands.common import add_database_arguments
from presence_core.errors import PresenceError
from presence_core.export import DATASETS, FORMATS, ExportFilters, stream_export


def moment(value: str, flag: str) -> datetime | date:
    """A --from/--to value: ``2026-05-04`` (a whole local day) or a timestamp;
    :class:`PresenceError` naming the flag otherwise."""
    from presence_core.status import parse_timestamp

    text_value = value.strip()
    try:
        if len(text_value) == 10:
            return date.fromisoformat(text_value)
        parsed = parse_timestamp(text_value)
    except ValueError:
        raise PresenceError(
            f"{flag} {value!r} is not a date (2026-05-04) or a timestamp (2026-05-04T09:00Z)"
        ) from None
    assert parsed is not None
    return parsed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, required=True, help="what to export")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="file format (csv)")
    parser.add_argument(
        "--output", required=True, metavar="PATH", help="file to write; '-' for stdout"
    )
    parser.add_argument("--from", dest="start", metavar="WHEN", help="date or timestamp (start)")
    parser.add_argument("--to", dest="end", metavar="WHEN", help="date (inclusive) or timestamp")
    parser.add_argument("--user", action="append", metavar="ID", help="only this user (repeatable)")
    parser.add_argument("--type", dest="user_type", help="only users of this type")
    parser.add_argument("--team", help="only this team")
    parser.add_argument(
        "--include-hidden", action="store_true", help="include users who hide their last seen"
    )
    parser.add_argument("--tz", help="time zone of dates and daily rows (default PRESENCE_TZ)")
    add_database_arguments(parser)
    parser.add_argument(
        "--read-database-url",
        metavar="URL",
        help="a streaming replica to read from; overrides PRESENCE_READ_DATABASE_URL "
        "(default: read where writers write)",
    )


Progress = Callable[..., None]


def terminal_progress(stream=None) -> Progress | None:
    """A one-line counter (rows, bytes, rate) on a terminal's stderr, else None."""
    out = stream or sys.stderr
    if not out.isatty():
        return None
    started = clock.monotonic()
    shown = [0.0]

    def show(rows: int, size: int, final: bool = False) -> None:
        now = clock.monotonic()
        if not final and now - shown[0] < 0.2:
            return
        shown[0] = now
        rate = rows / max(now - started, 1e-6)
        out.write(f"\rexported {rows:,} rows, {size / 1e6:,.1f} MB ({rate:,.0f} rows/s)")
        if final:
            out.write("\n")
        out.flush()

    return show


def write_stream(chunks: Iterable[bytes], out, fmt: str, progress=None) -> tuple[int, int]:
    """Copy ``chunks`` to the binary file ``out``; returns (rows, bytes). Rows are
    counted as lines for CSV (minus the header) and JSON lines."""
    lines = size = 0
    for chunk in chunks:
        out.write(chunk)
        size += len(chunk)
        if fmt != "parquet":
            lines += chunk.count(b"\n")
        if progress is not None:
            progress(lines - (fmt == "csv"), size)
    rows = max(lines - (fmt == "csv"), 0)
    if progress is not None:
        progress(rows, size, True)
    return rows, size


def run(args: argparse.Namespace) -> int:
    from presence_core.config import load_settings
    from presence_core.database import engine as db
    from presence_core.database.embedded import default_progress

    settings = load_settings(
        home=args.home, database_url=args.database_url, read_database_url=args.read_database_url
    )
    tz = analytics.time_zone(args.tz) if args.tz else settings.tz
    filters = ExportFilters(
        start=moment(args.start, "--from") if args.start else None,
        end=moment(args.end, "--to") if args.end else None,
        user_ids=tuple(args.user) if args.user else None,
        user_type=args.user_type,
        team=args.team,
        include_hidden=args.include_hidden,
        tz=tz,
        available_statuses=tuple(settings.available_statuses),
    )
    to_stdout = args.output == "-"
    if to_stdout and args.format == "parquet" and sys.stdout.isatty():
        raise PresenceError("parquet is binary: give --output FILE, or pipe stdout elsewhere")
    # an export only reads: from the replica when one is configured, never the writers' primary
    engine = db.connect_reader(settings, progress=default_progress)
    try:
        chunks = stream_export(engine, args.dataset, args.format, filters)
        progress = terminal_progress()
        if to_stdout:
            sys.stdout.flush()
            rows, _ = write_stream(chunks, sys.stdout.buffer, args.format, progress)
            sys.stdout.buffer.flush()
        else:
            path = Path(args.output)
            partial = path.with_name(path.name + ".partial")
            try:
                with open(partial, "wb") as out:
                    rows, size = write_stream(chunks, out, args.format, progress)
                os.replace(partial, path)
            except OSError as exc:
                raise PresenceError(f"cannot write {path}: {exc.strerror or exc}") from None
            finally:
                if partial.exists():
                    partial.unlink()
            if args.format != "parquet":
                print(f"wrote {rows:,} rows to {path}", file=sys.stderr)
            else:
                print(f"wrote {path} ({size:,} bytes)", file=sys.stderr)
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        engine.dispose()
    return 0
