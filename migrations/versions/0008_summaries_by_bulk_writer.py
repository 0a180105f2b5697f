"""Summaries kept on write: a bulk writer may supply them itself, in the same transaction.

The history generator writes users' complete histories in one go and holds every
row in order; it computes their summaries in Python (presence_core.synthetic.
summaries) for a fraction of the triggers' cost and copies them in the same
transaction. For that transaction only it sets `presence.summaries` to `writer`
(`set_config(..., true)`: transaction-local), and the summaries' trigger function
then leaves its inserts, updates and deletes alone. Every other writer leaves the
setting unset and the triggers keep the summaries as before; a truncate always
empties them. Only the function changes (0007's, with that test first).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SKIP = """
    if current_setting('presence.summaries', true) = 'writer' then
        return null;  -- the writer of this transaction copies the summaries itself
    end if;
    if tg_op = 'INSERT' then"""


def _previous():
    path = Path(__file__).with_name("0007_summaries_append_path.py")
    spec = importlib.util.spec_from_file_location("presence_migration_0007", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    function = _previous()._TRIGGER_FUNCTION
    marker = "\n    if tg_op = 'INSERT' then"
    assert function.count(marker) == 1
    op.execute(function.replace(marker, _SKIP, 1))


def downgrade() -> None:
    op.execute(_previous()._TRIGGER_FUNCTION)
