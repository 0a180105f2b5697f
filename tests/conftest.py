"""Shared fixtures: a real PostgreSQL for every test that touches storage.

By default the suite starts its own embedded PostgreSQL in a temporary
PRESENCE_HOME (on a free port, so a developer's own embedded server is left
alone). With PRESENCE_TEST_DATABASE_URL set, that server is used instead; its
user needs the right to create databases.

Each test gets a database of its own, cloned from a migrated template, so tests
never see each other's rows.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from presence_core.config import parse_database_url
from presence_core.database import engine as db
from presence_core.database.embedded import EmbeddedPostgres
from tests.redis_harness import RedisServer, redis_available

_counter = itertools.count()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true), a skipped test fails: a missing Chromium or Node must not
    pass silently. Tests marked ``may_skip`` are exempt (e.g. root-only checks)."""
    report = yield
    exempt = item.get_closest_marker("may_skip") is not None or hasattr(report, "wasxfail")
    if report.skipped and os.environ.get("CI") and not exempt:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {report.longrepr}"
    return report


@pytest.fixture(scope="session", autouse=True)
def _private_presence_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Spools and other PRESENCE_HOME files of in-process servers go to a scratch
    directory, never into the developer's own home."""
    before = os.environ.get("PRESENCE_HOME")
    os.environ["PRESENCE_HOME"] = str(tmp_path_factory.mktemp("presence-home"))
    yield
    if before is None:
        os.environ.pop("PRESENCE_HOME", None)
    else:
        os.environ["PRESENCE_HOME"] = before


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[URL]:
    """A URL on a real PostgreSQL server where tests may create databases."""
    configured = os.environ.get("PRESENCE_TEST_DATABASE_URL")
    if configured:
        yield parse_database_url(configured)
        return
    home = tmp_path_factory.mktemp("pg-home")
    server = EmbeddedPostgres(home)
    info = server.start(port=free_port())
    try:
        yield make_url(info.url)
    finally:
        server.stop()


def _psycopg_conninfo(url: URL, database: str | None = None) -> str:
    return url.set(drivername="postgresql", database=database or url.database).render_as_string(
        hide_password=False
    )


@pytest.fixture(scope="session")
def template_database(pg_admin_url: URL) -> Iterator[str]:
    """A database migrated to head, cloned for each test."""
    name = f"presence_test_template_{os.getpid()}"
    with psycopg.connect(_psycopg_conninfo(pg_admin_url), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}"')
        conn.execute(f'create database "{name}"')
    engine = db.make_engine(pg_admin_url.set(database=name))
    db.migrate(engine)
    engine.dispose()
    yield name
    with psycopg.connect(_psycopg_conninfo(pg_admin_url), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@contextmanager
def _scratch_database(admin_url: URL, prefix: str, template: str | None = None) -> Iterator[URL]:
    """Create a database (a copy of ``template`` if given); drop it afterwards."""
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    clause = f' template "{template}"' if template else ""
    with psycopg.connect(_psycopg_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(f'create database "{name}"{clause}')
    try:
        yield admin_url.set(database=name)
    finally:
        with psycopg.connect(_psycopg_conninfo(admin_url), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def database_url(pg_admin_url: URL, template_database: str) -> Iterator[URL]:
    """A fresh, migrated database for this test alone."""
    with _scratch_database(pg_admin_url, "presence_test", template_database) as url:
        yield url


@pytest.fixture
def empty_database_url(pg_admin_url: URL) -> Iterator[URL]:
    """A database with no schema at all (for migration tests)."""
    with _scratch_database(pg_admin_url, "presence_test_empty") as url:
        yield url


@pytest.fixture
def engine(database_url: URL) -> Iterator[Engine]:
    """An engine on this test's own database."""
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def cli_env(tmp_path: Path, database_url: URL) -> dict[str, str]:
    """Environment for running `presence` in a subprocess against this test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env["PRESENCE_DATABASE_URL"] = database_url.render_as_string(hide_password=False)
    env["PRESENCE_HOME"] = str(tmp_path / "home")
    return env


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real, empty redis-server on a free loopback port, stopped after the test."""
    if not redis_available():
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
