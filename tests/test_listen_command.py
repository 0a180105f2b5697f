"""``presence listen``'s token (issue 12, point 7): from a file or the environment,
never needed on the command line, where ``ps`` shows it to every local account.

Real processes: our server (requiring signed tokens) on loopback, ``presence
listen`` as a child process, the test's PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from presence_core.server import auth
from tests.server_harness import running_server
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
SECRET = "listen-command-test-secret-0123456789"


def covered(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("select count(*) from presence_coverage")).scalar_one()


def listen(env: dict, url: str, tmp_path: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "presence_core", "listen", "--server", url, "--name", "cmd"]
        + ["--spool-dir", str(tmp_path / "spool"), "--writer", "thread", *flags],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "stderr.log", "w"),  # noqa: SIM115 - kept open for the child
    )


def connects(engine, env: dict, tmp_path: Path, url: str, *flags: str) -> str:
    """Run the listener until it is connected (its coverage opened); its stderr."""
    process = listen(env, url, tmp_path, *flags)
    try:
        wait_for(
            lambda: covered(engine) or process.poll() is not None, 30, what="listener connected"
        )
        assert process.poll() is None, (tmp_path / "stderr.log").read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    return (tmp_path / "stderr.log").read_text()


@pytest.mark.parametrize("way", ["token-file", "PRESENCE_TOKEN", "PRESENCE_TOKEN_FILE"])
def test_the_token_never_needs_the_command_line(engine, cli_env, tmp_path, way):
    token_file = tmp_path / "token"
    token_file.write_text(auth.issue_token(SECRET, observer=True) + "\n")
    token_file.chmod(0o600)
    env, flags = dict(cli_env), []
    if way == "token-file":
        flags = ["--token-file", str(token_file)]
    elif way == "PRESENCE_TOKEN":
        env["PRESENCE_TOKEN"] = token_file.read_text().strip()
    else:
        env["PRESENCE_TOKEN_FILE"] = str(token_file)
    with running_server(None, auth_secret=SECRET) as srv:
        stderr = connects(engine, env, tmp_path, srv.url, *flags)
    assert "warning" not in stderr


def test_a_token_on_the_command_line_works_with_a_warning(engine, cli_env, tmp_path):
    token = auth.issue_token(SECRET, observer=True)
    with running_server(None, auth_secret=SECRET) as srv:
        stderr = connects(engine, cli_env, tmp_path, srv.url, "--token", token)
    [warning] = [line for line in stderr.splitlines() if "warning" in line]
    assert "--token" in warning and "ps" in warning and "--token-file" in warning
    assert token not in stderr  # the warning does not repeat the secret


def test_a_missing_token_file_is_one_line(cli_env, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "presence_core", "listen", "--token-file", str(tmp_path / "no")],
        env=cli_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no such file" in result.stderr
    assert os.path.basename(str(tmp_path / "no")) in result.stderr
