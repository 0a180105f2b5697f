"""The listener's writer with the summaries kept on write, against a raw binary COPY of
the same rows with the triggers off (``python -m bench.bench_analytics --write-cost``
runs it; section write-cost of docs/benchmarks.md)."""

from __future__ import annotations

import os
import time

import psycopg
from sqlalchemy import Engine

from bench.report import table


def _copy_without_triggers(url: str, rows, batch: int, engine: Engine) -> float:
    """Rows/s of a raw binary COPY with the table's triggers off (no summaries, no
    rollup invalidation): what writing costs without any maintenance."""
    from bench.bench_listener import reset
    from presence_core.database.storage import TRANSITION_TYPES

    reset(engine)
    sql = (
        "copy presence_transitions (user_id, status, occurred_at, received_at, inferred,"
        " reason, source) from stdin (format binary)"
    )
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute("set session_replication_role = replica")  # triggers off
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            with conn.transaction(), conn.cursor() as cur, cur.copy(sql) as copy:
                copy.set_types(list(TRANSITION_TYPES))
                for r in rows[i : i + batch]:
                    copy.write_row(
                        (r.user_id, r.status, r.occurred_at, r.received_at, False, None, "bench")
                    )
        elapsed = time.perf_counter() - started
    return len(rows) / elapsed


def write_cost(engine: Engine, url, count: int, repeat: int = 3) -> str:
    """bench_listener's run (b) (the writer, batches of 5,000 rows for 1,000 users,
    every row a transition) against raw binary COPY of the same rows: with the
    table's triggers (so the COPY maintains the summaries too) and without them."""
    from bench.bench_listener import copy_rate, sample_rows, writer_rate

    load_before = os.getloadavg()[0]
    plain = url.render_as_string(hide_password=False)
    rows = sample_rows(count)
    bare, with_triggers, writers = [], [], []
    for _ in range(repeat):
        bare.append(_copy_without_triggers(plain, rows, 5000, engine))
        with_triggers.append(copy_rate(plain, rows, 5000, engine))
        writers.append(writer_rate(engine, rows, 5000))
        print(
            f"  bare COPY {bare[-1]:,.0f}, COPY+summaries {with_triggers[-1]:,.0f},"
            f" writer {writers[-1]:,.0f} rows/s",
            flush=True,
        )
    best_bare, best_copy, writer = max(bare), max(with_triggers), max(writers)
    ratio = writer / best_bare

    def runs(values: list[float]) -> str:
        return "/".join(f"{v:,.0f}" for v in values)

    lines = [
        [
            "listener's writer (write_records, batches of 5,000), summaries kept",
            f"{writer:,.0f} rows/s",
            f"{best_bare:,.0f} rows/s (raw binary COPY, triggers off)",
            f"{ratio:.2f}",
            "≥ 0.5",
            "yes" if ratio >= 0.5 else "**no**",
        ],
        [
            "raw binary COPY with the triggers (summaries kept by the COPY itself)",
            f"{best_copy:,.0f} rows/s",
            f"{best_bare:,.0f} rows/s",
            f"{best_copy / best_bare:.2f}",
            "",
            "",
        ],
    ]
    load = f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    return (
        f"{count:,} rows (`bench.bench_listener.sample_rows`: 1,000 users, every row a "
        f"transition, 5 per user per batch), best of {repeat} alternating runs (rows/s: "
        f"bare COPY {runs(bare)}; COPY with triggers {runs(with_triggers)}; writer "
        f"{runs(writers)}). The baseline is the same COPY with `session_replication_role = "
        f"replica` (no trigger runs); bench_listener's own baseline COPY fires the triggers "
        f"and so pays for the summaries too. Load average (1 min) {load}.\n\n"
        + table(["measure", "measured", "baseline (same run)", "ratio", "target", "met"], lines)
    )
