"""The one exception type that means "the user can fix this"."""


class PresenceError(Exception):
    """An error shown to the user as one line, without a traceback."""
