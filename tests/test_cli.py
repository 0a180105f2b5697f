"""The presence command: help, errors as one line, python -m."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from presence_core.cli import build_parser


def presence(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    return subprocess.run(
        [sys.executable, "-m", "presence_core", *args],
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_the_commands_and_variables():
    result = presence("--help")
    assert result.returncode == 0
    for word in ("db", "migrate", "PRESENCE_DATABASE_URL", "PRESENCE_HOME", "PRESENCE_TZ"):
        assert word in result.stdout


def test_every_command_has_help():
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = list(subparsers.choices)
    assert "db" in commands and "migrate" in commands
    # all at once (each process mostly imports): the machine's cores share the work
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    running = {
        command: subprocess.Popen(
            [sys.executable, "-m", "presence_core", command, "--help"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    }
    for command, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, (command, stderr)
        assert "usage: presence " + command in stdout


def test_no_command_prints_usage():
    result = presence()
    assert result.returncode == 2 and "usage:" in result.stderr


def test_bad_database_url_is_one_line_without_traceback():
    result = presence("migrate", env={"PRESENCE_DATABASE_URL": "mysql://u@h/db"})
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "presence: error: unsupported database 'mysql'" in result.stderr
    assert "Traceback" not in result.stderr


def test_flag_overrides_the_variable():
    result = presence(
        "migrate",
        "--database-url",
        "postgresql://u@127.0.0.1:9/flagdb",
        env={"PRESENCE_DATABASE_URL": "mysql://ignored/x"},
    )
    assert result.returncode == 1
    assert "cannot reach the database at 127.0.0.1:9/flagdb" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_commands_refuse_when_an_external_url_is_set():
    result = presence("db", "stop", env={"PRESENCE_DATABASE_URL": "postgresql://u@h/db"})
    assert result.returncode == 1 and "not in use" in result.stderr
    url = presence("db", "url", env={"PRESENCE_DATABASE_URL": "postgresql://u@h/db"})
    assert url.stdout.strip() == "postgresql+psycopg://u@h/db"


def test_version():
    result = presence("--version")
    assert result.returncode == 0 and result.stdout.startswith("presence ")
