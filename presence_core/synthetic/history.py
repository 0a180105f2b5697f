"""Write the synthetic organisation's past straight to the database.

The people of :mod:`presence_core.synthetic.organisation` (the same ones ``simulate``
connects live) live through ``days`` days ending at ``end``: logging in around their
team's shift in its own zone (the night desk across midnight), lunch and short
breaks as ``away``, calls as ``busy``, weekends off (some work Saturday mornings),
absences of a few days and the occasional flapping connection. The same seed gives
the same history. Besides the transitions (COPY through the storage layer) it
leaves the database as a listener would have: ``presence_users`` as of ``end``
(status, status_since, last_seen, names, teams), the period recorded as observed
in ``presence_coverage`` (so Health shows no gap), and the teams' zones, shifts and
targets in ``presence_teams`` (teams already configured are left as they are).
"""

from __future__ import annotations

import multiprocessing
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter

from sqlalchemy import Engine, text

from presence_core import protocol
from presence_core.analytics.rollups import build_from_sessions, epoch_us, refresh_rollups
from presence_core.database import partitions, storage
from presence_core.database.coverage import CoverageMark, write_mark
from presence_core.database.teams import write_teams
from presence_core.errors import PresenceError
from presence_core.synthetic import summaries
from presence_core.synthetic.organisation import TEAMS as ORGANISATION_TEAMS
from presence_core.synthetic.organisation import WorkDay, organisation

__all__ = ["SOURCE", "TEAMS", "Progress", "generate_history", "transitions_of"]

SOURCE = "history"
"""``presence_transitions.source`` of generated rows, and the coverage's listener name."""
CHUNK_USERS = 200

TEAMS: tuple[tuple[str, str], ...] = tuple((t.name, t.time_zone) for t in ORGANISATION_TEAMS)
"""(team, time zone) of the organisation's teams (for benchmarks and tests)."""

Progress = Callable[[int, int, int], None]
"""progress(users_done, users_total, transitions_written)"""

Event = tuple[int, str, "str | None"]


def transitions_of(day: WorkDay) -> list[Event]:
    """One working day as transitions, (epoch seconds, status, reason), strictly
    increasing in time and never the same status twice in a row: a lost connection
    is ``offline`` (``disconnect``) until it comes back in the status chosen."""
    # one loop with the last event in locals (no closure, no per-event calls): this
    # runs for every working day of every person, about a fifth of the simulation
    marks: list[tuple[int, int, str | None]] = [(at, 0, status) for at, status in day.changes]
    for lost, back in day.drops:
        marks += [(lost, 1, None), (back, 2, None)]
    if day.drops:
        marks.sort(key=_MARK_ORDER)
    else:
        marks.sort(key=_MARK_AT)  # stable: the same order as by (time, kind 0)
    online, offline = protocol.ONLINE, protocol.OFFLINE
    last_at, last_status = day.login, online
    events: list[Event] = [(last_at, online, None)]
    status, connected = online, True
    for at, kind, changed in marks:
        if kind == 0:
            status = changed or status
            if not connected:
                continue
            now, reason = status, None
        elif kind == 1:
            connected = False
            now, reason = offline, "disconnect"
        else:
            connected = True
            now, reason = status, None
        if now == last_status:
            continue
        last_at = at if at > last_at else last_at + 1
        last_status = now
        events.append((last_at, now, reason))
    if last_status != offline:
        at = day.logout
        events.append(
            (
                at if at > last_at else last_at + 1,
                offline,
                "userOffline" if day.signs_out else "disconnect",
            )
        )
    return events


_MARK_ORDER = itemgetter(0, 1)
_MARK_AT = itemgetter(0)


def generate_history(
    engine: Engine,
    users: int,
    days: int,
    seed: int = 1,
    end: datetime | None = None,
    progress: Progress | None = None,
    rollups: bool = True,
    bulk: bool = True,
    workers: int = 1,
) -> int:
    """Write ``days`` days of history for the organisation's first ``users`` people,
    ending at ``end`` (default now; nothing is written after it); returns the
    transitions written.

    On a database that holds none of their transitions yet the rows are copied
    straight in with their summaries (sessions, time in status: migration 0005),
    computed here in the same transaction (:mod:`presence_core.synthetic.summaries`;
    ``bulk=False``: by the table's triggers, as for any writer); otherwise they go
    through :func:`presence_core.database.storage.write_batch`, which skips what
    exists (so a second run adds nothing) and whose triggers keep the summaries.
    With ``rollups`` the concurrency rollup is brought up to date at the end, so the
    dashboard's first long-range chart is fast: when every row went in bulk and the
    table holds nothing else, its minutes are swept from the sessions just written
    (:func:`presence_core.analytics.rollups.build_from_sessions`: seconds, where
    recomputing them from the transitions took minutes for a year); otherwise the SQL
    refreshes it on ``workers`` connections at once.

    The work is Python-bound (simulating the days, cutting the summaries): with
    ``workers`` > 1, chunks of users are simulated and written by that many
    processes, each with its own connection and one transaction per chunk. Users
    are independent and each user's rows stay in one COPY, so the content is the
    same as with one worker (only the order of the ids between users differs).
    """
    if users < 1 or days < 1:
        raise PresenceError("generate-history needs at least one user and one day")
    end = (end or datetime.now(UTC)).astimezone(UTC)
    start = end - timedelta(days=days)
    # its months' partitions first, so the past does not pile up in the default one
    partitions.ensure_range(engine, start, end)
    org = organisation(seed)
    people = org.people(users)
    with engine.connect() as conn:
        fresh = not conn.execute(
            text("select exists(select 1 from presence_transitions where user_id = any(:ids))"),
            {"ids": [p.key for p in people]},
        ).scalar()
    with engine.begin() as conn:
        write_teams(conn, [t.settings for t in org.teams_of(people)], replace=False)
    # every worker gets work even for a small crowd, and no chunk is bigger than CHUNK_USERS
    size = max(1, min(CHUNK_USERS, -(-users // max(1, workers))))
    chunks = [(first, min(first + size, users)) for first in range(0, users, size)]
    job = _Job(seed, start, end, fresh and bulk)
    written = done = 0
    sessions: list[array | None] = []  # each chunk's, while every chunk went in bulk
    if workers <= 1 or len(chunks) < 2:
        for first, last in chunks:
            count, spans = _write_chunk(engine, job, first, last)
            written += count
            sessions.append(spans)
            done += last - first
            if progress is not None:
                progress(done, users, written)
    else:
        url = engine.url.render_as_string(hide_password=False)
        # fork: no re-import of the caller's main module; the children make their
        # own engines and never touch the pooled connections closed here
        engine.dispose()
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(
            min(workers, len(chunks)), context, initializer=_start_worker, initargs=(url,)
        ) as pool:
            running = {
                pool.submit(_worker_chunk, job, first, last): last - first for first, last in chunks
            }
            for future in as_completed(running):
                count, spans = future.result()
                written += count
                sessions.append(spans)
                done += running[future]
                if progress is not None:
                    progress(done, users, written)
    with engine.begin() as conn:
        write_mark(conn, CoverageMark(SOURCE, start, end))
    if rollups:
        # a history written in one go on an empty table: the minutes from its sessions;
        # otherwise a first build of the whole period on as many connections as workers
        built = None
        if all(spans is not None for spans in sessions):
            keys = [p.key for p in people]
            built = build_from_sessions(engine, _pairs(sessions), written, keys, end)
        if built is None:
            refresh_rollups(engine, end, workers=max(1, workers))
    return written


@dataclass(frozen=True)
class _Job:
    """What every chunk of one :func:`generate_history` call shares (picklable)."""

    seed: int
    start: datetime
    end: datetime
    bulk: bool


_OPEN = -(2**63)  # an open session's end in a chunk's sessions array
_OCCURRED_AT = itemgetter(2)


def _pairs(chunks: list[array | None]) -> Iterator[tuple[int, int | None]]:
    """The sessions of every chunk, (started, ended or None) in microseconds."""
    for spans in chunks:
        assert spans is not None
        for i in range(0, len(spans), 2):
            ended = spans[i + 1]
            yield spans[i], None if ended == _OPEN else ended


def _write_chunk(engine: Engine, job: _Job, first: int, last: int) -> tuple[int, array | None]:
    """Simulate people ``first`` to ``last - 1`` and write their rows and their
    ``presence_users`` rows in one transaction; returns the rows written and, when
    they went in bulk with their summaries, their sessions (started, ended pairs in
    microseconds since 1970, an open one ending at ``_OPEN``) for the rollup."""
    org = organisation(job.seed)
    lo, hi, end = int(job.start.timestamp()), int(job.end.timestamp()), job.end
    rows: list[tuple] = []
    final: list[tuple] = []
    moment = datetime.fromtimestamp
    for person in map(org.person, range(first, last)):
        key = person.key
        kept = [
            event
            for day in org.work_days(person, job.start, end)
            for event in transitions_of(day)
            if lo <= event[0] <= hi
        ]
        rows += [
            (key, status, stamp, stamp, False, reason, SOURCE)
            for at, status, reason in kept
            for stamp in (moment(at, UTC),)
        ]
        status, since = storage.OFFLINE, None
        if kept:
            status, since = kept[-1][1], rows[-1][2]
        seen = since if status == storage.OFFLINE and since is not None else end
        final.append((key, status, since, seen, person.user_type, person.user_name, person.team))
    # in time order (stable: each user's rows keep theirs): the occurred_at index then
    # takes the chunk in one pass instead of a pass per user, half the server's work
    rows.sort(key=_OCCURRED_AT)
    spans = None
    with engine.begin() as conn:
        # fresh users: the rows and their summaries copied in bulk (summaries.py);
        # otherwise, or if a month was pruned, the one write path and its triggers
        written = summaries.write_history(conn, rows) if job.bulk else None
        if written:
            spans = array("q")
            for _user, started, ended in written[0]:
                spans.append(epoch_us(started))
                spans.append(_OPEN if ended is None else epoch_us(ended))
        else:
            storage.write_batch(conn, [storage.Transition(*r) for r in rows])
        storage.upsert_users(conn, final)
    return len(rows), spans


_worker_engine: Engine | None = None


def _start_worker(url: str) -> None:
    """A worker process's own engine (connections are not shared across processes)."""
    global _worker_engine
    from presence_core.database.engine import make_engine

    _worker_engine = make_engine(url, pool_size=1)


def _worker_chunk(job: _Job, first: int, last: int) -> tuple[int, array | None]:
    assert _worker_engine is not None
    return _write_chunk(_worker_engine, job, first, last)
