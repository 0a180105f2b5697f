"""The tables of DESIGN (users with the guide's last_seen, transitions, coverage) and
the listeners' heartbeats.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "presence_users",
        sa.Column("user_id", sa.Text(), primary_key=True),
        sa.Column("user_type", sa.Text()),
        sa.Column("user_name", sa.Text()),
        sa.Column("team", sa.Text()),
        sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'offline'")),
        sa.Column("status_since", sa.DateTime(timezone=True)),
        sa.Column(
            "last_seen", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("hide_last_seen", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    # the guide's migration: "Index for performance" on last_seen
    op.create_index("ix_presence_users_last_seen", "presence_users", ["last_seen"])
    op.create_index("ix_presence_users_team", "presence_users", ["team"])

    op.create_table(
        "presence_transitions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("inferred", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("reason", sa.Text()),
        sa.Column("source", sa.Text()),
        sa.UniqueConstraint(
            "user_id", "occurred_at", "status", name="uq_presence_transitions_event"
        ),
    )
    op.create_index("ix_presence_transitions_occurred_at", "presence_transitions", ["occurred_at"])

    op.create_table(
        "presence_coverage",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("listener", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "ix_presence_coverage_listener_started", "presence_coverage", ["listener", "started_at"]
    )

    # each listener's heartbeat, for the dashboard's Health page
    op.create_table(
        "presence_listeners",
        sa.Column("listener", sa.Text(), primary_key=True),
        sa.Column("server_url", sa.Text()),
        sa.Column("host", sa.Text()),
        sa.Column("pid", sa.BigInteger()),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("connected", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("last_event_at", sa.DateTime(timezone=True)),
        sa.Column("events_received", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("transitions_written", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("stopped_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("presence_listeners")
    op.drop_table("presence_coverage")
    op.drop_table("presence_transitions")
    op.drop_table("presence_users")
