"""``python -m presence_core`` is the ``presence`` command."""

from presence_core.cli import main

raise SystemExit(main())
