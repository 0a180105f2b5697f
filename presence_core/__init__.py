"""Presence analytics: who is online, who was, and for how long."""

__version__ = "0.1.0"
