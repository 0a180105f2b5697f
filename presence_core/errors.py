"""The errors every part of the product shares."""


class PresenceError(Exception):
    """An error shown to the user as one line, without a traceback."""


class DatabaseUnavailable(PresenceError):
    """The database cannot be reached (down, refusing, or too slow to answer).

    The one "database unavailable" error: raised by the engine when connecting,
    by the write path when a batch cannot be stored, and shown by the dashboard.
    """
