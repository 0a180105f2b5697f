"""Run the Streamlit dashboard (``streamlit run dashboard/app.py``).

Serves on 127.0.0.1:8501 by default; ``--host 0.0.0.0`` opens it to the network
(then set a password or sign-in in ``.streamlit/secrets.toml``, see
docs/dashboard.md). The dashboard reads the database and server named by the
``PRESENCE_*`` variables, which the flags below override.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from presence_core import resources
from presence_core.commands.common import add_database_arguments
from presence_core.config import load_settings
from presence_core.errors import PresenceError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    add_database_arguments(parser)
    parser.add_argument(
        "--server", metavar="URL", help="the presence server shown on Health (PRESENCE_SERVER_URL)"
    )
    parser.add_argument("--tz", help="display time zone when the browser gives none (PRESENCE_TZ)")


def command(args: argparse.Namespace) -> list[str]:
    """The ``streamlit run`` command line for these arguments."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(resources.dashboard_app()),
        "--server.headless=true",
        f"--server.port={args.port}",
        f"--server.address={args.host}",
        "--browser.gatherUsageStats=false",
    ]


def environment(args: argparse.Namespace, base: dict[str, str] | None = None) -> dict[str, str]:
    """The dashboard's environment: ``base`` (default ours, PRESENCE_* included)
    with the flags' values set as PRESENCE_* variables, validated first."""
    env = dict(os.environ if base is None else base)
    overrides = {
        "PRESENCE_DATABASE_URL": args.database_url,
        "PRESENCE_HOME": args.home,
        "PRESENCE_SERVER_URL": args.server,
        "PRESENCE_TZ": args.tz,
    }
    env.update({k: v for k, v in overrides.items() if v is not None})
    load_settings(env)  # one clear line for a bad value, before Streamlit starts
    return env


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise PresenceError(f"--port {args.port} is not a port number")
    env = environment(args)
    if not _port_free(args.host, args.port):
        raise PresenceError(
            f"port {args.port} on {args.host} is in use; choose another with --port"
        )
    print(f"presence: dashboard on http://{_shown(args.host)}:{args.port}", file=sys.stderr)
    sys.stderr.flush()
    # Streamlit reads the shipped settings beside the entry point and secrets from the
    # working directory's .streamlit/ (or ~/.streamlit); exec keeps our pid, so a
    # supervisor's SIGTERM reaches Streamlit directly.
    resources.streamlit_config()
    os.execve(sys.executable, command(args), env)
    return 0  # not reached


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _shown(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host
