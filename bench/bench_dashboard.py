"""Benchmark: time to first complete render of each dashboard page in a real browser.

Generates a history (default 300 users × 14 days; ``--users 5000 --days 90`` for
the issue's full size, about 8.6 M transitions, which takes a few minutes to
write) in a scratch database on the configured server (PRESENCE_DATABASE_URL,
else the embedded one), starts ``presence dashboard`` on it and opens each page
in Chromium (Playwright), timing from navigation until the page's script has
finished and every chart has drawn: cold (the first visit, caches empty) and
warm (the next visit, in a new browser session, within the cache's ttl).
The baseline, measured in the same run, is the same page on an empty database:
what Streamlit and the browser cost before any data.

    python -m bench.bench_dashboard [--users N] [--days D] [--runs R]
    python -m bench.bench_dashboard --database-url URL   # an existing history, as it is
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from bench.report import record, table
from presence_core.commands.generate_history import default_workers
from presence_core.config import load_settings
from presence_core.database import engine as db
from presence_core.synthetic import history

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PAGES = {
    "Live": "",
    "Last seen": "last-seen",
    "Activity": "activity",
    "Availability": "availability",
    "Export": "export",
    "Health": "health",
}


def _conninfo(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def scratch_database(suffix: str) -> Iterator[URL]:
    """A migrated database of its own on the configured server, dropped afterwards."""
    url = db.resolve_url(load_settings())
    name = f"presence_bench_dash_{suffix}_{os.getpid()}"
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    bench_url = url.set(database=name)
    engine = db.make_engine(bench_url)
    try:
        db.migrate(engine)
        engine.dispose()
        yield bench_url
    finally:
        engine.dispose()
        with psycopg.connect(_conninfo(url), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def dashboard(url: URL) -> Iterator[str]:
    """`presence dashboard` on the given database; yields its base URL when it answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env["PRESENCE_DATABASE_URL"] = url.render_as_string(hide_password=False)
    env["PRESENCE_TZ"] = "UTC"
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "presence_core", "dashboard", "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the dashboard exited with status {process.returncode}")
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the dashboard did not start within 60 s") from None
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Drawn: the script has finished, no element is still a placeholder, and every chart has
# its SVG. Streamlit draws an element whose code is loaded on demand (plotly's 4.7 MB
# bundle, in a new browser session) as a skeleton first; without waiting for those, a
# page counted as drawn while its charts were still skeletons, and their loading and
# drawing fell into the next step timed: in a warm visit to Activity, the first keystroke
# in the period picker waited 1-9 s for them (load 8-10), and the range figures counted it.
DRAWN = """() => !document.querySelector("[data-testid='stSkeleton']")
    && [...document.querySelectorAll("[data-testid='stPlotlyChart']")]
       .every(chart => chart.querySelector('.main-svg'))"""


def _settled(page, title: str) -> None:
    page.locator("h1", has_text=title).first.wait_for()
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']")
    page.wait_for_function(DRAWN)
    if page.locator("[data-testid='stException']").count():
        raise RuntimeError(f"{title} shows an exception")


def _new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, timezone_id="UTC")
    page = context.new_page()
    page.set_default_timeout(300_000)
    return page


def render_seconds(browser, base: str, title: str, path: str) -> float:
    """Seconds from navigation (a new browser session) until the page's script is done
    and its charts are drawn."""
    page = _new_page(browser)
    try:
        started = time.perf_counter()
        page.goto(f"{base}/{path}")
        _settled(page, title)
        return time.perf_counter() - started
    finally:
        page.context.close()


# the pages whose period the issue sets a target for: (title, path, period input label,
# the option to click first for the picker to show, if any)
RANGED = (
    ("Activity", "activity", "Period", None),
    ("Availability", "availability", "Days", "Custom window"),
)
RANGE_DAYS = 90
COLD_TARGET_S, WARM_TARGET_S = 3.0, 1.5


def range_seconds(
    browser, base: str, title: str, path: str, label: str, option: str | None, days: int
) -> tuple[float, float]:
    """Seconds from entering a ``days``-day period (ending today, UTC) in the page's
    period picker (a new browser session, the page drawn with its default period)
    until the page is drawn again for it; and, of those, the seconds the typing took
    (eight digits, each a keystroke the browser handles before the next)."""
    today = datetime.now(UTC).date()
    start = today - timedelta(days=days - 1)
    page = _new_page(browser)
    try:
        page.goto(f"{base}/{path}")
        _settled(page, title)
        if option is not None:
            # the radio's own input sits under its drawn circle: check it directly
            page.get_by_role("radio", name=option).check(force=True)
            page.get_by_role("spinbutton", name=f"year, {label} start date").wait_for()
            _settled(page, title)
        # Streamlit's range picker: segments (year, month, day) that take typed digits
        year = page.get_by_role("spinbutton", name=f"year, {label} start date", exact=True)
        started = time.perf_counter()
        year.click()
        page.keyboard.type(f"{start:%Y%m%d}")
        typed = time.perf_counter() - started
        page.locator("h1").first.click()  # the picker sends its value when it loses focus
        page.get_by_text(f"{start} to {today}").first.wait_for()
        _settled(page, title)
        return time.perf_counter() - started, typed
    finally:
        page.context.close()


def measure_ranges(
    url: URL, browser, runs: int, days: int, empty: bool = False
) -> dict[str, tuple[float, float, float]]:
    """Per ranged page: (cold, best warm, typing in the best warm) seconds for a
    ``days``-day period, on a freshly started dashboard: cold is the first time that
    period is asked for (nothing cached), warm a later one in a new browser session.
    ``empty``: only the pages that show their picker without data (Availability says
    "no presence data yet" instead)."""
    result = {}
    with dashboard(url) as base:
        render_seconds(browser, base, "Live", "")  # Streamlit's own first-load work
        for title, path, label, option in RANGED:
            if empty and option is not None:
                continue
            cold, cold_typing = range_seconds(browser, base, title, path, label, option, days)
            warm, typing = min(
                range_seconds(browser, base, title, path, label, option, days) for _ in range(runs)
            )
            result[title] = (cold, warm, typing)
            print(
                f"  {title:<13} {days}-day period: cold {cold * 1000:6.0f} ms"
                f" (typing {cold_typing * 1000:4.0f})   warm {warm * 1000:6.0f} ms"
                f" (typing {typing * 1000:4.0f})",
                flush=True,
            )
    return result


def switch_seconds(browser, base: str, runs: int) -> dict[str, float]:
    """Per page: the best seconds from a click on its link in the sidebar (the app
    already open on another page) until it is drawn."""
    page = _new_page(browser)
    best: dict[str, float] = {}
    try:
        page.goto(base)
        _settled(page, "Live")
        titles = list(PAGES)
        for _ in range(runs):
            for i, title in enumerate(titles):
                if i == 0:  # Live is open: go elsewhere first
                    page.get_by_role("link", name="Health").click()
                    _settled(page, "Health")
                started = time.perf_counter()
                page.locator("[data-testid='stSidebarNav']").get_by_role(
                    "link", name=title, exact=True
                ).click()
                _settled(page, title)
                elapsed = time.perf_counter() - started
                best[title] = min(best.get(title, elapsed), elapsed)
    finally:
        page.context.close()
    return best


def measure_pages(browser, url: URL, runs: int) -> dict[str, tuple[float, float, float]]:
    """Per page: (cold, best warm, best switch) seconds on a freshly started dashboard."""
    result = {}
    with dashboard(url) as base:
        render_seconds(browser, base, "Live", "")  # Streamlit's own first-load work
        cold = {title: render_seconds(browser, base, title, path) for title, path in PAGES.items()}
        warm = {
            title: min(render_seconds(browser, base, title, path) for _ in range(runs))
            for title, path in PAGES.items()
        }
        switch = switch_seconds(browser, base, runs)
        for title in PAGES:
            result[title] = (cold[title], warm[title], switch[title])
            print(
                f"  {title:<13} cold {cold[title] * 1000:6.0f} ms   warm {warm[title] * 1000:6.0f}"
                f" ms   switch {switch[title] * 1000:6.0f} ms",
                flush=True,
            )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=2, help="warm visits per page (best kept)")
    parser.add_argument(
        "--database-url", metavar="URL", help="measure this database's history (not generated)"
    )
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="print the figures only; leave docs/benchmarks.md as it is (trial runs)",
    )
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    load_at_start = os.getloadavg()[0]
    with (
        scratch_database("empty") as empty_url,
        scratch_database("data") as scratch_url,
        sync_playwright() as playwright,
    ):
        if args.database_url:
            data_url = make_url(args.database_url)
            engine = db.make_engine(data_url)
            with engine.connect() as conn:
                rows = conn.execute(text("select count(*) from presence_transitions")).scalar()
                args.users = conn.execute(text("select count(*) from presence_users")).scalar()
                span = conn.execute(
                    text("select max(occurred_at) - min(occurred_at) from presence_transitions")
                ).scalar()
            args.days = span.days + (span.seconds > 0) if span else 0
        else:
            data_url = scratch_url
            engine = db.make_engine(data_url)
            print(f"generating {args.users} users × {args.days} days …", flush=True)
            started = time.perf_counter()
            rows = history.generate_history(
                engine,
                args.users,
                args.days,
                args.seed,
                end=datetime.now(UTC),
                workers=default_workers(),
            )
            with engine.begin() as conn:
                conn.execute(text("analyze"))
            print(f"  {rows:,} transitions in {time.perf_counter() - started:.1f} s", flush=True)
        engine.dispose()
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            print("empty database (baseline):", flush=True)
            baseline = measure_pages(browser, empty_url, args.runs)
            print(f"{args.users} users × {args.days} days:", flush=True)
            measured = measure_pages(browser, data_url, args.runs)
            days = min(RANGE_DAYS, max(args.days, 1))
            print(f"{days}-day period, empty database (baseline):", flush=True)
            base_ranges = measure_ranges(empty_url, browser, args.runs, days, empty=True)
            print(f"{days}-day period, {args.users} users × {args.days} days:", flush=True)
            ranges = measure_ranges(data_url, browser, args.runs, days)
        finally:
            browser.close()

    rows_out = []
    for title in PAGES:
        base_cold, _, base_switch = baseline[title]
        cold, warm, switch = measured[title]
        rows_out.append(
            [
                title,
                f"{base_cold * 1000:.0f}",
                f"{cold * 1000:.0f}",
                f"{warm * 1000:.0f}",
                f"{cold / base_cold:.1f}×",
                f"{base_switch * 1000:.0f}",
                f"{switch * 1000:.0f}",
            ]
        )
    load = os.getloadavg()[0]
    body = (
        f"`presence dashboard` in Chromium (Playwright), history of {args.users:,} users × "
        f"{args.days} days ({rows:,} transitions). Time from navigation until the page's "
        "script has finished and every chart has drawn, in ms. *Cold*: first visit in a "
        "new browser session after the dashboard started (caches empty, includes loading "
        "Streamlit's JavaScript); *warm*: a later visit in a new browser session (results "
        "cached: ttl 1.5 s for live views, 60 s for history); *switch*: a click on the "
        "page's link in the sidebar of an open dashboard, as people use it. Baseline: "
        "the same page on an empty database (Streamlit and the browser alone). Drawn: "
        "no element is still a placeholder (Streamlit draws one while an element's code "
        "loads, e.g. plotly's bundle in a new browser session) and every chart has drawn. "
        f"Load average: {load_at_start:.1f} at the start of the run, {load:.1f} at its end.\n\n"
        + table(
            [
                "page",
                "cold, empty DB",
                "cold",
                "warm",
                "cold ÷ empty",
                "switch, empty DB",
                "switch",
            ],
            rows_out,
        )
        + f"\n\nA {days}-day period on the pages issue 16 sets targets for: seconds from "
        "entering the period in the page's picker (the page already drawn with its "
        "default period, in a new browser session) until the page is drawn for it; cold: "
        "the first time that period is asked for after the dashboard started, warm: the "
        "best later one (cached), with the part of it spent typing the date's eight "
        "digits (each keystroke waits for the browser). Baseline: the same on the empty "
        "database (Availability shows no picker without data).\n\n"
        + table(
            [
                "page",
                "cold, empty DB",
                "cold",
                "warm, empty DB",
                "warm",
                "of which typing",
                "target",
                "met",
            ],
            [
                [
                    title,
                    f"{base_ranges[title][0] * 1000:.0f}" if title in base_ranges else "–",
                    f"{ranges[title][0] * 1000:.0f}",
                    f"{base_ranges[title][1] * 1000:.0f}" if title in base_ranges else "–",
                    f"{ranges[title][1] * 1000:.0f}",
                    f"{ranges[title][2] * 1000:.0f}",
                    f"cold ≤ {COLD_TARGET_S * 1000:.0f}, warm ≤ {WARM_TARGET_S * 1000:.0f}",
                    "yes"
                    if ranges[title][0] <= COLD_TARGET_S and ranges[title][1] <= WARM_TARGET_S
                    else "**no**",
                ]
                for title, _, _, _ in RANGED
            ],
        )
        + "\n\nRun: `python -m bench.bench_dashboard` (add `--users 5000 --days 90` for the "
        "issue's full history)."
    )
    if args.no_record:
        print(body)
    else:
        record("dashboard", "Dashboard: time to first complete render per page", body)


if __name__ == "__main__":
    main()
