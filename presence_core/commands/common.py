"""What several commands share: the database flags, and turning a secret into a value
without putting it on the command line."""

from __future__ import annotations

import argparse


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by commands that use the database."""
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL; overrides PRESENCE_DATABASE_URL (default: the embedded database)",
    )
    parser.add_argument(
        "--home", metavar="DIR", help="overrides PRESENCE_HOME (where the embedded database lives)"
    )
