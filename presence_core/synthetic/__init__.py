"""Synthetic data for trying the product: a history written straight to the database,
and a crowd of real Socket.IO clients living through their shifts."""

from presence_core.synthetic.crowd import CrowdStats, SimUser, make_users, plan_crowd, run_crowd
from presence_core.synthetic.history import generate_history, make_profile, user_events

__all__ = [
    "CrowdStats",
    "SimUser",
    "generate_history",
    "make_profile",
    "make_users",
    "plan_crowd",
    "run_crowd",
    "user_events",
]
