"""`presence teams import`: each team's zone, shift and target from a CSV, all or nothing,
and the reads the dashboard uses."""

from __future__ import annotations

import subprocess
import sys
from datetime import time

import pytest

from presence_core.database.teams import (
    import_teams,
    parse_teams_csv,
    settings_for,
    team_settings,
    teams_without_users,
)
from presence_core.database.users import import_users, parse_users_csv
from presence_core.errors import PresenceError
from presence_core.shifts import TeamSettings

HEADER = "team,time_zone,shift_start,shift_end,target_pct\n"


def presence(cli_env, *args, stdin: bytes | None = None):
    done = subprocess.run(
        [sys.executable, "-m", "presence_core", *args],
        env=cli_env,
        capture_output=True,
        input=stdin,
        timeout=120,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def parse(content: str, name: str = "teams.csv"):
    return parse_teams_csv(content.splitlines(keepends=True), name)


def test_import_creates_updates_and_reads_back(engine):
    first = parse(
        HEADER + "Support EMEA,Europe/London,08:00,16:30,80\n"
        "Night Desk, Europe/Berlin ,22:00,06:00,70%\n"
        "\n"
        "Sales,America/Chicago,00:00,24:00,\n"
    )
    assert first.sets_targets
    assert import_teams(engine, first) == (0, 3)
    assert team_settings(engine) == {
        "Night Desk": TeamSettings("Night Desk", "Europe/Berlin", time(22), time(6), 70.0),
        "Sales": TeamSettings("Sales", "America/Chicago", time(0), time(0), None),
        "Support EMEA": TeamSettings("Support EMEA", "Europe/London", time(8), time(16, 30), 80.0),
    }
    assert settings_for(engine, "Sales").whole_day
    assert settings_for(engine, "Night Desk").crosses_midnight
    # a team nobody configured: the display zone and the whole day
    assert settings_for(engine, "Billing", "Asia/Tokyo") == TeamSettings(
        "Billing", "Asia/Tokyo", time(0), time(0), None
    )
    # columns in any order, no target column: targets stay as they were
    second = parse("shift_end,team,shift_start,time_zone\n17:00,Support EMEA,09:00:30,UTC\n")
    assert not second.sets_targets
    assert import_teams(engine, second) == (1, 0)
    assert settings_for(engine, "Support EMEA") == TeamSettings(
        "Support EMEA", "UTC", time(9, 0, 30), time(17), 80.0
    )
    # an empty target cell clears the target
    import_teams(engine, parse(HEADER + "Support EMEA,UTC,09:00,17:00,\n"))
    assert settings_for(engine, "Support EMEA").target_pct is None
    assert set(team_settings(engine)) == {"Night Desk", "Sales", "Support EMEA"}


def test_teams_without_users_names_the_likely_typos(engine):
    import_users(engine, parse_users_csv(["user_id,team\n", "1,Sales\n"]))
    assert teams_without_users(engine, ["Sales", "Slaes", "Sales"]) == ["Slaes"]
    assert teams_without_users(engine, []) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "teams.csv: empty file"),
        ("team,zone\n", "line 1: unknown column 'zone'"),
        ("team,time_zone,shift_start\n", "line 1: missing column 'shift_end'"),
        ("team,team,time_zone,shift_start,shift_end\n", "line 1: a column is named twice"),
        (HEADER + "A,UTC,09:00,17:00,80\nB,UTC,09:00\n", "line 3: 3 fields, expected 5"),
        (HEADER + "A,UTC,09:00,17:00,\nA,UTC,10:00,18:00,\n", "line 3: team 'A' already given"),
        (HEADER + " ,UTC,09:00,17:00,\n", "line 2: team is empty"),
        (HEADER + "A,Mars/Olympus,09:00,17:00,\n", "line 2: 'Mars/Olympus' is not a known time"),
        (HEADER + "A,,09:00,17:00,\n", "line 2: '' is not a known time zone"),
        (HEADER + "A,UTC,9am,17:00,\n", "line 2: shift_start '9am' is not a time of day"),
        (HEADER + "A,UTC,09:00,25:00,\n", "line 2: shift_end '25:00' is not a time of day"),
        (HEADER + "A,UTC,24:00,08:00,\n", "line 2: shift_start '24:00' is not a time of day"),
        (HEADER + "A,UTC,09:60,17:00,\n", "line 2: shift_start '09:60'"),
        (HEADER + "A,UTC,09:00,17:00,0\n", "line 2: target_pct '0' is not a percentage"),
        (HEADER + "A,UTC,09:00,17:00,101\n", "line 2: target_pct '101'"),
        (HEADER + "A,UTC,09:00,17:00,nan\n", "line 2: target_pct 'nan'"),
        (HEADER + "A,UTC,09:00,17:00,lots\n", "line 2: target_pct 'lots'"),
        (HEADER + "A,UTC,09:00,17:00,\nB\x00,UTC,09:00,17:00,\n", "line 3: holds a NUL character"),
        (
            HEADER + "A,UTC,09:00,17:00,\n\udcff,UTC,09:00,17:00,\n",
            "line 3: holds a lone surrogate U[+]DCFF",
        ),
        (HEADER + "A" * 257 + ",UTC,09:00,17:00,\n", "line 2: team is 257 characters"),
        (HEADER + 'A,UTC,"09:00,17:00,\n', "line 2: unexpected end of data"),
    ],
)
def test_malformed_files_are_refused_with_the_line(content, message):
    with pytest.raises(PresenceError, match=message):
        parse(content)


def test_cli_import_and_a_refused_file_changes_nothing(cli_env, engine, tmp_path):
    import_users(engine, parse_users_csv(["user_id,team\n", "1,Support EMEA\n"]))
    good = tmp_path / "teams.csv"
    good.write_text(
        "\ufeff" + HEADER + "Support EMEA,Europe/London,08:00,16:30,80\n"
        "Nihgt Desk,Europe/Berlin,22:00,06:00,70\n"
    )
    code, out, err = presence(cli_env, "teams", "import", str(good))
    assert code == 0, err
    assert out.splitlines() == [
        "imported 2 teams: 0 updated, 2 created",
        "note: no user is in 'Nihgt Desk' yet",
    ]
    before = team_settings(engine)
    bad_files = {
        "zone.csv": (
            HEADER + "Support EMEA,UTC,09:00,17:00,\nX,Europe/Berlim,09:00,17:00,\n"
        ).encode(),
        "nul.csv": (HEADER + "Support EMEA,UTC,09:00,17:00,\nX\x00,UTC,09:00,17:00,\n").encode(),
        "latin1.csv": (HEADER + "Équipe,UTC,09:00,17:00,\n").encode("latin-1"),
    }
    expected = {
        "zone.csv": "line 3: 'Europe/Berlim' is not a known time zone",
        "nul.csv": "line 3: holds a NUL character",
        "latin1.csv": "cannot read: 'utf-8' codec can't decode",
    }
    for name, content in bad_files.items():
        path = tmp_path / name
        path.write_bytes(content)
        code, out, err = presence(cli_env, "teams", "import", str(path))
        assert code == 1 and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"presence: error: {path}"), err
        assert expected[name] in lines[0]
    assert team_settings(engine) == before  # line 2 of each bad file was not applied
    code, _, err = presence(cli_env, "teams", "import", str(tmp_path / "nope.csv"))
    assert code == 1 and "nope.csv: no such file" in err
    code, out, err = presence(
        cli_env,
        "teams",
        "import",
        "-",
        stdin=(HEADER + "Support EMEA,UTC,07:00,15:00,90\n").encode(),
    )
    assert code == 0, err
    assert out.strip() == "imported 1 team: 1 updated, 0 created"
    assert settings_for(engine, "Support EMEA") == TeamSettings(
        "Support EMEA", "UTC", time(7), time(15), 90.0
    )
    code, _, err = presence(cli_env, "teams", "import", "-", stdin=b"team\xff\n")
    assert (
        code == 1 and err.startswith("presence: error: stdin: cannot read") and "Trace" not in err
    )


def test_working_days_imported_and_kept_by_a_file_without_them(engine, cli_env, tmp_path):
    first = parse(
        "team,time_zone,shift_start,shift_end,work_days\n"
        "Night Desk,Europe/Berlin,22:00,06:00,Sun-Thu\n"
        "Support EMEA,Europe/London,08:00,16:30,Mon-Fri\n"
        "Sales,America/Chicago,09:00,17:00,\n"
    )
    assert first.sets_work_days and not first.sets_targets
    import_teams(engine, first)
    teams = team_settings(engine)
    assert teams["Night Desk"].work_days == frozenset({6, 0, 1, 2, 3})
    assert teams["Support EMEA"].work_days == frozenset(range(5))
    assert teams["Sales"].work_days is None  # empty: every day
    # a later file without the column changes shifts, never working days
    import_teams(engine, parse(HEADER + "Support EMEA,Europe/London,09:00,17:00,75\n"))
    emea = settings_for(engine, "Support EMEA")
    assert (emea.shift_start, emea.work_days) == (time(9), frozenset(range(5)))
    # a bad value is refused with its line, and nothing changes
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "team,time_zone,shift_start,shift_end,work_days\n"
        "Sales,America/Chicago,09:00,17:00,Mon-Fri\n"
        "Billing,Europe/Paris,09:00,17:00,Weekdays\n"
    )
    code, _, err = presence(cli_env, "teams", "import", str(bad))
    assert code != 0 and "line 3" in err and "working days" in err and "Traceback" not in err
    assert team_settings(engine)["Sales"].work_days is None
    assert "Billing" not in team_settings(engine)
