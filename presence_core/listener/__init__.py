"""The listener: logs every status transition a presence server announces into
PostgreSQL (``presence listen``).

- :class:`Listener` (:mod:`.listener`): the orchestration, on a
  :class:`ServerConnection` (:mod:`.connection`) and a :class:`HeartbeatKeeper`
  (:mod:`.heartbeat`);
- :class:`UserTracker` (:mod:`.state`): what is believed about each user, and what
  an event means given that (no I/O);
- :mod:`.decisions`: the pure rules (the clock rule, the reconcile plan, backoff);
- :class:`WritePipeline` (:mod:`.pipeline`): batches, the :class:`Spool`
  (:mod:`.spool`) and the writer process (:class:`ProcessWriter`, :mod:`.writer`);
- :class:`Stats` and the Prometheus registry (:mod:`.metrics`).

The names are imported when first used: the writer process runs
``python -m presence_core.listener.writer``, which imports this package first, and
must not pay for Socket.IO (0.4 s and 300 modules more at every start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    "CLOCK_AHEAD_LIMIT": "decisions",
    "UserView": "decisions",
    "backoff_delay": "decisions",
    "default_name": "decisions",
    "event_time": "decisions",
    "plan_reconcile": "decisions",
    "spool_name": "decisions",
    "HeartbeatKeeper": "heartbeat",
    "Listener": "listener",
    "ServerConnection": "connection",
    "Stats": "metrics",
    "WRITERS": "pipeline",
    "WritePipeline": "pipeline",
    "Spool": "spool",
    "UserTracker": "state",
    "ProcessWriter": "writer",
    "WriterLost": "writer",
}

__all__ = [
    "CLOCK_AHEAD_LIMIT",
    "HeartbeatKeeper",
    "Listener",
    "ProcessWriter",
    "ServerConnection",
    "Spool",
    "Stats",
    "UserTracker",
    "UserView",
    "WRITERS",
    "WritePipeline",
    "WriterLost",
    "backoff_delay",
    "default_name",
    "event_time",
    "plan_reconcile",
    "spool_name",
]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


if TYPE_CHECKING:
    from presence_core.listener.connection import ServerConnection
    from presence_core.listener.decisions import (
        CLOCK_AHEAD_LIMIT,
        UserView,
        backoff_delay,
        default_name,
        event_time,
        plan_reconcile,
        spool_name,
    )
    from presence_core.listener.heartbeat import HeartbeatKeeper
    from presence_core.listener.listener import Listener
    from presence_core.listener.metrics import Stats
    from presence_core.listener.pipeline import WRITERS, WritePipeline
    from presence_core.listener.spool import Spool
    from presence_core.listener.state import UserTracker
    from presence_core.listener.writer import ProcessWriter, WriterLost
