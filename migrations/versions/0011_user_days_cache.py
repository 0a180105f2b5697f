"""Per zone, user and whole past local day: the daily summary's figures, cached.

A team's time in status over 30 days and the ``daily`` export of a year read one
stored quarter-hour array per user, UTC day and status and turn them into local
days (about 10 us a row): 0.45 s for a team's month, 25 s for a year's export of
5,000 users. A past local day's figures change only when a write touches an
instant before that day's end, like the daily active users of 0009. So
``presence_user_days`` keeps, per zone, local day and user (every user, hidden ones
included: filters apply on read), what the summaries gave for that whole day:
the sessions overlapping it, the seconds online, first in and last out, and the
microseconds in each present status. ``presence_user_days_cover`` says which
(zone, day) are cached, for every user at once, with the day's end.

The mark is the ``daily_active`` state row of 0009: the same writes (any
transition, a user added to or removed from presence_users with rows stored)
invalidate both caches from the same instant, and a reader clears it only after
deleting the days ending after it from both (presence_core.analytics.day_cache).
So the triggers and the writers' cost are unchanged.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "presence_user_days_cover",
        sa.Column("tz", sa.Text(), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("day_end", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "presence_user_days",
        sa.Column("tz", sa.Text(), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("user_id", sa.Text(), primary_key=True),
        sa.Column("sessions", sa.Integer()),
        sa.Column("online", sa.Numeric()),
        sa.Column("first_online", sa.DateTime(timezone=True)),
        sa.Column("last_offline", sa.DateTime(timezone=True)),
        sa.Column("statuses", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("status_us", postgresql.ARRAY(sa.BigInteger()), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("presence_user_days")
    op.drop_table("presence_user_days_cover")
