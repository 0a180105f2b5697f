"""Teams as things the product knows: each team's time zone, daily shift and target.

`presence_teams` holds one row per team (`presence teams import`, or the synthetic
organisation of `generate-history`). `shift_end` at or before `shift_start` means
the shift crosses midnight (22:00–06:00); equal means the whole day. A team without
a row uses the display zone and the whole day. `presence_users.team` is not a
foreign key: users may name a team nobody has configured yet.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "presence_teams",
        sa.Column("team", sa.Text(), primary_key=True),
        sa.Column("time_zone", sa.Text()),
        sa.Column("shift_start", sa.Time()),
        sa.Column("shift_end", sa.Time()),
        sa.Column("target_pct", sa.Numeric()),
    )


def downgrade() -> None:
    op.drop_table("presence_teams")
