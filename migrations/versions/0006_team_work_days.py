"""Teams' working days: a shift begins only on them (Mon-Fri for most teams).

Without them every day was a working day, so on a Sunday every team read as on
shift and missing its target, and on a Monday morning "the last complete shift"
was Sunday's empty one. `work_days` holds the local weekdays a shift begins on,
written `Mon,Tue,Wed,Thu,Fri`; null is every day, which is what existing teams
keep until an import says otherwise.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("presence_teams", sa.Column("work_days", sa.Text()))


def downgrade() -> None:
    op.drop_column("presence_teams", "work_days")
