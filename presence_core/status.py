"""How long ago a user was seen, as text and a color.

Timestamps are datetimes (naive means UTC) or ISO-8601 strings (``Z`` and
offsets such as ``+02:00`` accepted, no offset means UTC); ``None`` means never
seen. A ``last_seen`` in the future counts as just now.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from presence_core.config import ConfigError, display_timezone

GREEN = "#10b981"
AMBER = "#f59e0b"
GRAY = "#6b7280"

OFFLINE = "offline"

_ONLINE_FOR = timedelta(seconds=30)
_AMBER_FOR = timedelta(minutes=5)


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_timestamp(value: datetime | str | None) -> datetime | None:
    """Return ``value`` as an aware UTC datetime, or ``None`` for ``None``.

    :param value: a datetime (naive means UTC) or an ISO-8601 string (``Z`` or
                  an offset; none means UTC).
    :raises ValueError: for anything else; the message names the value.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp: {_describe(value)}") from None
    else:
        raise ValueError(f"not a timestamp: {_describe(value)}")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"timestamp out of range: {_describe(value)}") from None


def _resolve_tz(tz: tzinfo | str | None) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    if tz is None:
        try:
            return display_timezone()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    if not isinstance(tz, str):
        raise ValueError(f"not a time zone: {_describe(tz)}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone: {_describe(tz)}") from None


def _now(now: datetime | str | None) -> datetime:
    return datetime.now(UTC) if now is None else parse_timestamp(now)


def _elapsed(last_seen: datetime, now: datetime | str | None) -> timedelta:
    return max(_now(now) - last_seen, timedelta(0))


def _format_date(moment: datetime, zone: tzinfo) -> str:
    try:
        local = moment.astimezone(zone)
    except OverflowError:  # the very first or last days datetime can hold
        local = moment
    return f"{local.month}/{local.day}/{local.year}"


def format_last_seen(
    last_seen: datetime | str | None,
    now: datetime | str | None = None,
    tz: tzinfo | str | None = None,
) -> str:
    """Say how long ago ``last_seen`` was, relative to ``now``.

    Returns ``offline`` (never seen), ``online`` (under 30 s), ``just now``
    (under a minute), ``5m ago``, ``3h ago``, ``yesterday`` (24 h to under
    48 h), ``4d ago``, ``2w ago`` (under 30 days), then the date as
    ``12/25/2024``. Counts are whole units, rounded down.

    :param last_seen: when the user was last seen, or ``None``.
    :param now: the reference time; default the current time.
    :param tz: zone for the date (a ``ZoneInfo`` or a name); default the
               ``PRESENCE_TZ`` environment variable, else UTC.
    :raises ValueError: for an unparseable timestamp or an unknown zone.
    """
    seen = parse_timestamp(last_seen)
    zone = _resolve_tz(tz)
    if seen is None:
        return OFFLINE
    delta = _elapsed(seen, now)
    if delta < _ONLINE_FOR:
        return "online"
    if delta < timedelta(minutes=1):
        return "just now"
    if delta < timedelta(hours=1):
        return f"{delta // timedelta(minutes=1)}m ago"
    if delta < timedelta(days=1):
        return f"{delta // timedelta(hours=1)}h ago"
    if delta < timedelta(days=2):
        return "yesterday"
    if delta < timedelta(days=7):
        return f"{delta.days}d ago"
    if delta < timedelta(days=30):
        return f"{delta.days // 7}w ago"
    return _format_date(seen, zone)


def status_color(last_seen: datetime | str | None, now: datetime | str | None = None) -> str:
    """Return :data:`GREEN` under 30 s, :data:`AMBER` under 5 min, else :data:`GRAY`
    (also for ``None``).

    :raises ValueError: for an unparseable timestamp.
    """
    seen = parse_timestamp(last_seen)
    if seen is None:
        return GRAY
    delta = _elapsed(seen, now)
    if delta < _ONLINE_FOR:
        return GREEN
    if delta < _AMBER_FOR:
        return AMBER
    return GRAY


def is_online(last_seen: datetime | str | None, now: datetime | str | None = None) -> bool:
    """Return whether ``last_seen`` is less than 30 s before ``now`` (False for ``None``).

    :raises ValueError: for an unparseable timestamp.
    """
    seen = parse_timestamp(last_seen)
    return seen is not None and _elapsed(seen, now) < _ONLINE_FOR


def is_present(status: str | None) -> bool:
    """Return whether a status means the user is there: anything but ``offline``
    or ``None``."""
    return status is not None and status != OFFLINE


def display_status(
    status: str | None,
    last_seen: datetime | str | None,
    now: datetime | str | None = None,
    tz: tzinfo | str | None = None,
) -> tuple[str, str]:
    """Return ``(text, color)`` for a user whose status is known.

    A present user (see :func:`is_present`) shows the status itself, however
    old ``last_seen`` is: :data:`GREEN` for ``online``, :data:`AMBER` for any
    other status (``away``, ``busy``, ...). An offline user (or ``None``) shows
    :func:`format_last_seen` and :func:`status_color`, except that one seen
    under 30 s ago shows ``just now`` in :data:`AMBER`, never ``online``: they
    have just left.

    :raises ValueError: for an unparseable timestamp or an unknown zone.
    """
    seen = parse_timestamp(last_seen)
    current = _now(now)
    zone = _resolve_tz(tz)
    if is_present(status):
        return status, GREEN if status == "online" else AMBER
    if seen is not None and _elapsed(seen, current) < _ONLINE_FOR:
        return "just now", AMBER
    return format_last_seen(seen, current, zone), status_color(seen, current)
