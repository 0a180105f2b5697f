"""The ``presence`` commands, one module each, named as the command.

Each module provides ``add_arguments(parser)`` and ``run(args) -> int``; argparse,
signals and process wiring live here and nowhere else, so the core modules take
plain arguments. :data:`COMMANDS` is the list ``presence --help`` shows.
"""

from __future__ import annotations

# (command, module, one-line help); modules are imported only when needed
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("db", "db", "the embedded PostgreSQL: start, stop, status, url"),
    ("migrate", "migrate", "upgrade the database schema to this version"),
    ("serve", "serve", "run the presence server (the guide's Socket.IO protocol)"),
    ("token", "token", "issue a signed token for clients or observers"),
    ("listen", "listen", "log every status transition to PostgreSQL"),
    ("simulate", "simulate", "a crowd of Socket.IO clients living through shifts"),
    ("generate-history", "generate_history", "write realistic synthetic history"),
    ("export", "export", "export presence history for analysts"),
    ("users", "users", "manage users' teams, names and types"),
    ("teams", "teams", "manage teams' time zones, shifts and targets"),
    ("prune", "prune", "drop whole months of raw transitions (retention)"),
    ("dashboard", "dashboard", "run the Streamlit dashboard"),
    ("demo", "demo", "the whole product on the embedded database, in one command"),
)

__all__ = ["COMMANDS"]
