"""The wheel is the product: build it, install it outside the checkout, run every command.

``python -m build`` makes the sdist and then the wheel from that sdist (so both
must be complete). The wheel goes into a scratch virtualenv in a temporary
directory; the commands run there with the working directory outside the
checkout and no PYTHONPATH, so nothing can come from the repository. The
dependencies (Streamlit, pandas, …) are lent by the test's own environment
through a ``.pth`` line, so the test needs no network; presence's own files come
only from the wheel, which the first test proves.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import socketio

from presence_core.database.embedded import EmbeddedPostgres
from tests.conftest import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
PAGE_TITLES = {
    "": "Live",
    "last-seen": "Last seen",
    "activity": "Activity",
    "availability": "Availability",
    "export": "Export",
    "health": "Health",
}


class Installed:
    """A scratch virtualenv holding the built wheel."""

    def __init__(self, root: Path, wheel: Path) -> None:
        self.root = root
        self.wheel = wheel
        self.venv = root / "venv"
        self.bin = self.venv / "bin"
        self.work = root / "work"  # the working directory: not the checkout
        self.work.mkdir()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PRESENCE_", "PYTHON"))}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["PRESENCE_HOME"] = str(self.root / "home")
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / "presence"), *args],
            env=self.env(**env),
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    @contextmanager
    def process(self, name: str, *args: str, **env: str) -> Iterator[subprocess.Popen]:
        log = (self.root / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [str(self.bin / "presence"), *args],
            env=self.env(**env),
            cwd=self.work,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            log.close()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    source = root / "source"
    # build from a copy of the tracked files, as a clean clone would have them
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, tracked):
        path = ROOT / name.decode()
        target = source / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            target.symlink_to(os.readlink(path))
        elif path.is_file():
            shutil.copy2(path, target)
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("*.whl")
    assert list(dist.glob("*.tar.gz")), "no sdist"
    here = Installed(root, wheel)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(here.venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(here.bin / "python"), "install", "-q"]
        + ["--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    site = subprocess.run(
        [str(here.bin / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the dependencies only: a plain directory line adds no .pth of the checkout's venv
    Path(site, "_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return here


def test_the_wheel_carries_the_product_and_nothing_generic(installed: Installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for needed in [
        "presence_core/migrations/env.py",
        "presence_core/migrations/script.py.mako",
        "presence_core/migrations/versions/0001_initial.py",
        "presence_core/migrations/sql/add_last_seen_column.sql",
        "presence_core/dashboard/app.py",
        "presence_core/dashboard/.streamlit/config.toml",
        "presence_core/pages/live.py",
        "presence_core/pages/health.py",
    ]:
        assert needed in names, needed
    tops = {name.split("/")[0] for name in names}
    assert {"dashboard", "pages", "migrations", "tests", "bench"}.isdisjoint(tops)
    assert not [n for n in names if "secrets" in n and n.endswith(".toml")]

    where = subprocess.run(
        [
            str(installed.bin / "python"),
            "-c",
            "import presence_core; print(presence_core.__file__)",
        ],
        env=installed.env(),
        cwd=installed.work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(installed.venv)), where
    version = installed.run("--version")
    assert version.returncode == 0 and version.stdout.startswith("presence "), version


def test_migrate_export_serve_and_listen_on_an_external_postgresql(
    installed: Installed, empty_database_url
):
    url = empty_database_url.render_as_string(hide_password=False)
    migrated = installed.run("migrate", "--database-url", url)
    assert migrated.returncode == 0, migrated.stderr
    assert "schema upgraded from empty" in migrated.stdout
    again = installed.run("migrate", "--database-url", url)
    assert again.returncode == 0 and "already at" in again.stdout

    port = free_port()
    with (
        installed.process("serve", "serve", "--port", str(port), "--database-url", url) as serve,
        installed.process(
            "listen", "listen", "--server", f"http://127.0.0.1:{port}", "--database-url", url
        ) as listen,
    ):
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/health"), timeout=60, what="serve")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert json.load(response)["loop"] == "uvloop"  # the wheel brings its default loop
        client = socketio.SimpleClient()
        client.connect(f"http://127.0.0.1:{port}", transports=["websocket"])
        try:
            # a careless client first: a poison payload is refused and stores nothing
            client.emit("userOnline", {"userId": {"$ne": ""}, "userName": "x" * 10_000})
            event, error = client.receive(timeout=30)
            assert event == "presenceError", (event, error)
            client.emit("userOnline", {"userId": "wheel-1", "userName": "Wheel"})
            conninfo = url.replace("+psycopg", "")

            def stored() -> int:
                assert serve.poll() is None, installed.log("serve")
                assert listen.poll() is None, installed.log("listen")
                with psycopg.connect(conninfo) as conn:
                    return conn.execute(
                        "select count(*) from presence_transitions where user_id = 'wheel-1'"
                    ).fetchone()[0]

            assert wait_for(stored, timeout=60, what="the transition stored") == 1
            with psycopg.connect(conninfo) as conn:  # and nothing from the poison payload
                assert conn.execute("select count(*) from presence_transitions").fetchone() == (1,)
        finally:
            client.disconnect()
    exported = installed.run(
        "export", "--dataset", "transitions", "--output", "-", "--database-url", url
    )
    assert exported.returncode == 0, exported.stderr
    assert "wheel-1,,Wheel" in exported.stdout


def test_a_cluster_of_two_nodes_runs_from_the_wheel(installed: Installed, redis_server):
    # the Lua scripts are run-time files: a cluster from the wheel proves they ship
    ports = {node: free_port() for node in ("n1", "n2")}
    urls = {node: f"http://127.0.0.1:{port}" for node, port in ports.items()}
    with contextlib.ExitStack() as nodes:
        for node, port in ports.items():
            nodes.enter_context(
                installed.process(
                    node,
                    "serve",
                    "--no-db",
                    "--port",
                    str(port),
                    "--redis",
                    redis_server.url,
                    "--node-id",
                    node,
                )  # fmt: skip
            )
        for node, url in urls.items():

            def ready(url: str = url) -> bool:
                with (
                    contextlib.suppress(OSError, ValueError),
                    urllib.request.urlopen(f"{url}/health", timeout=2) as response,
                ):
                    return json.load(response)["cluster"]["ready"] is True
                return False

            wait_for(ready, timeout=60, what=f"node {node} ready")
        watcher, tab = socketio.SimpleClient(), socketio.SimpleClient()
        watcher.connect(urls["n2"], transports=["websocket"])
        tab.connect(urls["n1"], transports=["websocket"])
        try:
            tab.emit("userOnline", {"userId": "", "userName": "Nobody"})  # refused: no change
            assert tab.receive(timeout=30)[0] == "presenceError"
            tab.emit("userOnline", {"userId": "wheel-9", "userName": "Nine"})
            event, payload = watcher.receive(timeout=30)  # heard on the other node, once
            assert (event, payload["userId"], payload["status"]) == (
                "userStatusChanged",
                "wheel-9",
                "online",
            )
        finally:
            tab.disconnect()
            watcher.disconnect()


def test_the_dashboard_renders_every_page_from_the_wheel(installed: Installed, database_url):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright import sync_api

    url = database_url.render_as_string(hide_password=False)
    port = free_port()
    with installed.process(
        "dashboard", "dashboard", "--port", str(port), "--database-url", url
    ) as p:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert p.poll() is None, installed.log("dashboard")
            return _answers(f"{base}/_stcore/health")

        wait_for(healthy, timeout=90, interval=0.2, what="the dashboard's health endpoint")
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            for path, title in PAGE_TITLES.items():
                page.goto(f"{base}/{path}")
                sync_api.expect(page.locator("h1").first).to_have_text(title, timeout=60_000)
                page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']")
                sync_api.expect(page.locator("[data-testid='stException']")).to_have_count(0)
            browser.close()
        assert errors == []


def test_the_demo_runs_from_the_wheel_on_the_embedded_database(installed: Installed, tmp_path):
    home = tmp_path / "demo-home"
    dash, server = free_port(), free_port()
    argv = ["demo", "--no-browser", "--port", str(dash), "--server-port", str(server)]
    argv += ["--history-users", "20", "--history-days", "2", "--users", "8"]
    env = {"PRESENCE_HOME": str(home), "PRESENCE_DB_PORT": str(free_port())}
    try:
        with installed.process("demo", *argv, **env) as demo:

            def ready() -> bool:
                assert demo.poll() is None, installed.log("demo")
                return _answers(f"http://127.0.0.1:{dash}/_stcore/health") and _answers(
                    f"http://127.0.0.1:{server}/health"
                )

            wait_for(ready, timeout=180, interval=0.2, what="the demo's dashboard and server")
            os.killpg(demo.pid, signal.SIGINT)
            assert demo.wait(60) == 0, installed.log("demo")
    finally:
        EmbeddedPostgres(home).stop()


def test_a_damaged_installation_is_one_clear_line(installed: Installed, empty_database_url):
    site = Path(
        subprocess.run(
            [
                str(installed.bin / "python"),
                "-c",
                "import presence_core; print(presence_core.__file__)",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=installed.work,
            env=installed.env(),
        ).stdout.strip()
    ).parent
    env_py = site / "migrations" / "env.py"
    kept = env_py.read_bytes()
    env_py.unlink()
    try:
        url = empty_database_url.render_as_string(hide_password=False)
        result = installed.run("migrate", "--database-url", url)
    finally:
        env_py.write_bytes(kept)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "env.py" in line and "reinstall" in line


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
