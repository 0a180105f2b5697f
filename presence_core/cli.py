"""The ``presence`` command (also ``python -m presence_core``).

Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int``; this module only builds the
parser, loads settings and turns a :class:`PresenceError` into one line on
stderr and exit status 1 (2 for usage errors, as argparse does).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from presence_core import __version__
from presence_core.commands import COMMANDS
from presence_core.errors import PresenceError

DATABASE_HELP = """
environment:
  PRESENCE_DATABASE_URL  PostgreSQL URL (postgresql+psycopg://user:pass@host:port/db);
                         unset: the embedded PostgreSQL under PRESENCE_HOME
  PRESENCE_HOME          where the embedded database lives
                         (default ~/.local/share/presence-analytics)
  PRESENCE_SERVER_URL    the Socket.IO server (default http://127.0.0.1:4100)
  PRESENCE_TZ            display time zone when none is known (default UTC)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="presence",
        description="Presence analytics: who is online, who was, and for how long.",
        epilog=DATABASE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"presence {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        module = _load(f"presence_core.commands.{module_name}")
        if module is None:
            continue
        command = sub.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip().split("\n\n")[0],
            epilog=DATABASE_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:  # not built yet; anything else missing is a real error
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return int(args.handler(args) or 0)
    except PresenceError as exc:
        print(f"presence: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("presence: interrupted", file=sys.stderr)
        return 130
