"""Per UTC quarter-hour concurrency, above the per-minute rollup.

A daily concurrency over a year read 525,600 minute rows. Every real zone's offset
is a multiple of 15 minutes today (DST included), so local hours and days are
unions of UTC quarter-hours: `presence_concurrency_quarters` keeps, per quarter,
the most users present at once (the max of its minutes' peaks) and the
user-seconds (their sum), 35,040 rows a year. It is written by the refresh that
writes the minutes, in the same transaction, and has no state row of its own: a
quarter is valid when it ends at or before the minutes' validity (the 'concurrency'
row of presence_rollup_state); readers use the minutes for anything else.

The upgrade builds the quarters from the minutes already stored. Minutes past
their validity (dirty or not yet refreshed) make quarters that no reader uses and
that the next refresh recomputes (it starts at the quarter holding its first
minute). Writers and the invalidation trigger are unchanged.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "presence_concurrency_quarters",
        sa.Column("quarter", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("peak", sa.Integer(), nullable=False),
        sa.Column("user_seconds", sa.Float(), nullable=False),
    )
    op.execute(
        "insert into presence_concurrency_quarters (quarter, peak, user_seconds)"
        " select date_bin(interval '15 minutes', minute, timestamptz '2000-01-01 00:00:00+00'),"
        " max(peak), sum(user_seconds) from presence_concurrency_minutes group by 1"
    )


def downgrade() -> None:
    op.drop_table("presence_concurrency_quarters")
