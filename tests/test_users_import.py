"""`presence users import`: teams, names and types from a CSV, all or nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from presence_core.database import storage
from presence_core.database.users import import_users, parse_users_csv
from presence_core.errors import PresenceError

T = datetime(2026, 5, 4, 9, tzinfo=UTC)


def presence(cli_env, *args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "presence_core", *args],
        env=cli_env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


def test_import_sets_team_names_and_types_and_creates_unknown_users(engine):
    storage.write_batch(
        engine, [storage.Transition("1", "online", T, T, user_name="Old", user_type="agent")]
    )
    rows = parse_users_csv(
        ["user_id,team,user_name,user_type\n", "1,red,,\n", "2,blue,Bo,admin\n", "\n"]
    )
    assert import_users(engine, rows) == (1, 1)
    state = storage.current_state(engine)
    assert (state["1"].team, state["1"].user_name, state["1"].user_type, state["1"].status) == (
        "red",
        "Old",
        "agent",
        "online",
    )
    assert (state["2"].team, state["2"].user_name, state["2"].user_type, state["2"].status) == (
        "blue",
        "Bo",
        "admin",
        "offline",
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("user_id,colour\n1,red\n", "line 1: unknown column 'colour'"),
        ("user_id,user_name\n1,Al\n", "line 1: missing column 'team'"),
        ("user_id,team\n1,red\n2,blue,extra\n", "line 3: 3 fields, expected 2"),
        ("user_id,team\n1,red\n1,blue\n", "line 3: user '1' already given on line 2"),
        ("user_id,team\n1,red\n ,blue\n", "line 3: userId is empty"),
        ('user_id,team\n1,"red\n', "line 2: unexpected end of data"),
    ],
)
def test_malformed_files_are_refused_with_the_line(content, message):
    with pytest.raises(PresenceError, match=message):
        parse_users_csv(content.splitlines(keepends=True), "users.csv")


def test_cli_import_and_refusal_changes_nothing(cli_env, engine, tmp_path):
    good = tmp_path / "users.csv"
    good.write_text("user_id,team,user_name\n7,support,Sam\n8,sales,\n")
    done = presence(cli_env, "users", "import", str(good))
    assert done.returncode == 0, done.stderr
    assert "imported 2 users: 0 updated, 2 created" in done.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,team\n7,billing\n9,x,y\n")
    refused = presence(cli_env, "users", "import", str(bad))
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"presence: error: {bad}, line 3: 3 fields, expected 2"
    ]
    state = storage.current_state(engine)
    assert set(state) == {"7", "8"}
    assert state["7"].team == "support"  # line 2 of the bad file was not applied
    missing = presence(cli_env, "users", "import", str(tmp_path / "nope.csv"))
    assert missing.returncode == 1 and "no such file" in missing.stderr
    piped = presence(cli_env, "users", "import", "-", stdin="user_id,team\n8,billing\n")
    assert piped.returncode == 0, piped.stderr
    assert storage.current_state(engine)["8"].team == "billing"


@pytest.mark.parametrize("junk", ["sup\x00port", "sup\ud800port"])
def test_a_value_postgresql_cannot_store_is_one_line_and_changes_nothing(engine, tmp_path, junk):
    path = tmp_path / "users.csv"
    path.write_text(f"user_id,team\n1,ok\n2,{junk}\n", encoding="utf-8", errors="surrogatepass")
    result = subprocess.run(
        [sys.executable, "-m", "presence_core", "users", "import", str(path)],
        env={
            **os.environ,
            "PRESENCE_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    # a NUL is named with its line; a lone surrogate cannot even be valid UTF-8
    assert ("line 3" in line) if "\x00" in junk else ("cannot read" in line)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("select count(*) from presence_users").scalar() == 0
