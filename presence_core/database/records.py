"""The one write path: what the listener and the server commit (transitions,
sightings, coverage marks), how a record is kept in a spool, and
:func:`write_records`, the one function that writes them.

Both writers reach it through :class:`presence_core.listener.pipeline.WritePipeline`
(the server through :class:`presence_core.server.writer.DatabaseWriter`). This
module has no Socket.IO in it: :mod:`presence_core.listener.writer` runs
:func:`write_records` in a child process that imports only this and the storage
layer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime

import psycopg
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from presence_core.database.coverage import CoverageMark, write_mark
from presence_core.database.storage import Sighting, Transition, write_batch
from presence_core.errors import DatabaseUnavailable

log = logging.getLogger("presence.listener")


Record = Transition | Sighting | CoverageMark


def record_to_dict(record: Record) -> dict:
    """A record as a JSON-ready dict (for the spool)."""
    if isinstance(record, Transition):
        return {
            "k": "t",
            "u": record.user_id,
            "s": record.status,
            "o": record.occurred_at.isoformat(),
            "r": record.received_at.isoformat(),
            "i": record.inferred,
            "why": record.reason,
            "src": record.source,
            "ut": record.user_type,
            "un": record.user_name,
            "tm": record.team,
        }
    if isinstance(record, Sighting):
        return {
            "k": "s",
            "u": record.user_id,
            "l": record.last_seen.isoformat(),
            "ut": record.user_type,
            "un": record.user_name,
            "tm": record.team,
        }
    return {
        "k": "c",
        "n": record.listener,
        "a": record.started_at.isoformat(),
        "e": record.ended_at.isoformat() if record.ended_at else None,
    }


def record_from_dict(data: Mapping) -> Record:
    """The inverse of :func:`record_to_dict`; raises ValueError/KeyError for junk."""
    kind = data["k"]
    ts = datetime.fromisoformat
    if kind == "t":
        return Transition(
            user_id=data["u"],
            status=data["s"],
            occurred_at=ts(data["o"]),
            received_at=ts(data["r"]),
            inferred=bool(data["i"]),
            reason=data.get("why"),
            source=data.get("src"),
            user_type=data.get("ut"),
            user_name=data.get("un"),
            team=data.get("tm"),
        )
    if kind == "s":
        return Sighting(
            user_id=data["u"],
            last_seen=ts(data["l"]),
            user_type=data.get("ut"),
            user_name=data.get("un"),
            team=data.get("tm"),
        )
    if kind == "c":
        return CoverageMark(
            listener=data["n"],
            started_at=ts(data["a"]),
            ended_at=ts(data["e"]) if data["e"] else None,
        )
    raise ValueError(f"unknown spool record kind {kind!r}")


# --- writing them ------------------------------------------------------------------------


def is_connection_error(exc: BaseException) -> bool:
    if isinstance(
        exc,
        (
            OperationalError,
            InterfaceError,
            OSError,
            psycopg.OperationalError,
            psycopg.InterfaceError,
        ),
    ):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


_ROW_ERRORS = (sa_exc.DataError, sa_exc.IntegrityError, psycopg.DataError, psycopg.IntegrityError)


def write_records(engine: Engine, records: Sequence[Record]) -> tuple[int, int]:
    """Commit ``records`` in one transaction; return (transitions inserted, rejected).

    Idempotent. Raises :class:`~presence_core.errors.DatabaseUnavailable` when the
    database cannot be reached. A batch the database refuses for its content (which
    the protocol's checks should make impossible) is split in halves until the
    refused records are found; those are dropped, logged and counted, so one bad row
    never blocks the rest.
    """
    try:
        return _write_once(engine, records), 0
    except (SQLAlchemyError, psycopg.Error, OSError) as exc:
        # COPY runs on the raw psycopg connection, so its errors arrive unwrapped
        if not isinstance(exc, _ROW_ERRORS):
            # down, or wrong in a way no row explains (schema, permissions): keep the
            # records (the caller spools them) and try again later
            raise DatabaseUnavailable(first_line(exc)) from None
        if len(records) == 1:
            log.error("event=row_refused record=%r error=%s", records[0], first_line(exc))
            return 0, 1
    middle = len(records) // 2  # halve until the refused rows are found
    first = write_records(engine, records[:middle])
    second = write_records(engine, records[middle:])
    return first[0] + second[0], first[1] + second[1]


def _write_once(engine: Engine, records: Sequence[Record]) -> int:
    transitions = [r for r in records if isinstance(r, Transition)]
    sightings = [r for r in records if isinstance(r, Sighting)]
    marks = [r for r in records if isinstance(r, CoverageMark)]
    with engine.begin() as conn:
        result = write_batch(conn, transitions, sightings)
        for mark in marks:
            write_mark(conn, mark)
    return result.inserted


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an error (the driver's, when SQLAlchemy wraps one)."""
    inner = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return lines[0] if lines else type(inner).__name__
