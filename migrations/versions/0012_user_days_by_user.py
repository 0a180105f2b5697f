"""The per-user day cache of 0011, also by user: a team's read takes its members' days.

``presence_user_days`` is keyed (tz, day, user_id): the export of every user reads it
in its output order. A team's or one user's read wants its members' days only: by that
key it read every user's rows of the period and dropped the others (a team of 787 of
5,000 people: 100,000 rows read for 15,000 kept). This index gives each member's days
as one range.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_presence_user_days_user", "presence_user_days", ["tz", "user_id", "day"])


def downgrade() -> None:
    op.drop_index("ix_presence_user_days_user", table_name="presence_user_days")
