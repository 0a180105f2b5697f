"""Where the product's run-time files are, in a checkout and in an installed wheel.

The repository keeps ``migrations/``, ``dashboard/``, ``pages/`` and
``.streamlit/`` at its top level (the design card's layout); the wheel installs
them inside the package as ``presence_core.migrations``, ``presence_core.dashboard``
and ``presence_core.pages``, with the Streamlit settings beside the entry point
(``dashboard/.streamlit``). Everything that needs one of these files asks this
module, so no code depends on where a checkout is.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from presence_core.errors import PresenceError

__all__ = [
    "ResourceMissing",
    "dashboard_app",
    "migrations_dir",
    "page_file",
    "pages_dir",
    "sql_file",
    "streamlit_config",
]


class ResourceMissing(PresenceError):
    """A file the installed product needs is not there: the installation is damaged."""


def _package_dir(package: str) -> Path:
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise ResourceMissing(f"{package} is not installed; reinstall presence-analytics") from None
    # an installed wheel or editable install is a real directory; zip imports are not supported
    path = Path(str(root))
    if not path.is_dir():
        raise ResourceMissing(
            f"{package} is not a directory ({path}); reinstall presence-analytics"
        )
    return path


def _file(package: str, *parts: str) -> Path:
    path = _package_dir(package).joinpath(*parts)
    if not path.is_file():
        raise ResourceMissing(
            f"{'/'.join(parts)} is missing from {package} ({path}); reinstall presence-analytics"
        )
    return path


def migrations_dir() -> Path:
    """The Alembic environment (``env.py``, ``versions/``)."""
    _file("presence_core.migrations", "env.py")
    return _package_dir("presence_core.migrations")


def sql_file(name: str) -> Path:
    """A hand-applied SQL script from ``migrations/sql/``."""
    return _file("presence_core.migrations", "sql", name)


def dashboard_app() -> Path:
    """The Streamlit entry point, ``dashboard/app.py``."""
    return _file("presence_core.dashboard", "app.py")


def streamlit_config() -> Path:
    """The dashboard's Streamlit settings; Streamlit finds them beside the entry point."""
    return _file("presence_core.dashboard", ".streamlit", "config.toml")


def pages_dir() -> Path:
    """The folder of dashboard pages, one file each."""
    return _package_dir("presence_core.pages")


def page_file(name: str) -> Path:
    """One dashboard page, e.g. ``live.py``."""
    return _file("presence_core.pages", name)
