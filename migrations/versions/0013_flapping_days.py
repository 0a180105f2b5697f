"""Per min_n, window and whole past UTC day: the users who may flap, cached.

Flapping users over a week read every selected user's transitions (2.5 M at 20,000
users, about 0.5 s) for the few hundred who flap. A window holding ``min_n``
transitions starts at the first of them, in one UTC day; so the users who flap in a
period are among each of its days' users with ``min_n`` transitions within a window
starting that day. ``presence_flapping_days`` keeps those users per (``min_n``,
window in microseconds, UTC day), every user included (filters apply on read), and
``flapping_users`` runs its definition for them only.

A day's users depend on the log from the day's start to its end plus the window:
that instant is ``day_end``. So a write whose earliest ``occurred_at`` is ``m``
changes no day whose ``day_end`` is at or before ``m``, and the day caches' mark and
protocol (the ``daily_active`` state row of 0009, presence_core.analytics.day_cache)
drop the others. No trigger changes: the writers' cost is unchanged.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "presence_flapping_days",
        sa.Column("min_n", sa.Integer(), primary_key=True),
        sa.Column("window_us", sa.BigInteger(), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("day_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_ids", postgresql.ARRAY(sa.Text()), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("presence_flapping_days")
