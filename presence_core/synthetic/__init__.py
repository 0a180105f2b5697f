"""Synthetic data for trying the product: one organisation (teams with their zones and
shifts, people, their working days), whose past ``generate_history`` writes straight
to the database and whose present ``run_crowd`` plays as real Socket.IO clients."""

from presence_core.synthetic.crowd import CrowdStats, make_users, plan_crowd, run_crowd
from presence_core.synthetic.history import generate_history, transitions_of
from presence_core.synthetic.organisation import (
    TEAMS,
    Organisation,
    Person,
    Team,
    WorkDay,
    organisation,
)

__all__ = [
    "TEAMS",
    "CrowdStats",
    "Organisation",
    "Person",
    "Team",
    "WorkDay",
    "generate_history",
    "make_users",
    "organisation",
    "plan_crowd",
    "run_crowd",
    "transitions_of",
]
