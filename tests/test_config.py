"""Configuration: PRESENCE_* variables, validation, flags over variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from presence_core.config import ConfigError, load_settings, parse_database_url


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://u:p@db.example:5433/presence",
        "postgres://u:p@db.example:5433/presence",
        "postgresql+psycopg://u:p@db.example:5433/presence",
    ],
)
def test_postgres_urls_get_psycopg(text):
    url = parse_database_url(text)
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.database, url.username) == (
        "db.example",
        5433,
        "presence",
        "u",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("not a url", "not a database URL"),
        ("mysql://u@h/db", "presence needs PostgreSQL"),
        ("postgresql+psycopg2://u@h/db", "unsupported driver"),
        ("postgresql://u@h", "names no database"),
    ],
)
def test_bad_urls_are_one_clear_error(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_database_url(text)
    assert "\n" not in str(info.value)


def test_passwords_never_appear_in_errors():
    with pytest.raises(ConfigError) as info:
        parse_database_url("mysql://u:s3cret@h/db")
    assert "s3cret" not in str(info.value)


def test_defaults():
    settings = load_settings({})
    assert settings.database_url is None and settings.embedded
    assert settings.home == Path("~/.local/share/presence-analytics").expanduser()
    assert settings.server_url == "http://127.0.0.1:4100"
    assert settings.tz.key == "UTC"
    assert settings.available_statuses == ("online",)


def test_environment_is_read():
    settings = load_settings(
        {
            "PRESENCE_DATABASE_URL": "postgresql://u@h/db",
            "PRESENCE_HOME": "/srv/presence",
            "PRESENCE_SERVER_URL": "https://presence.example:8443/",
            "PRESENCE_TZ": "Europe/Berlin",
            "PRESENCE_AVAILABLE_STATUSES": "online, accepting_chats",
        }
    )
    assert settings.database_url.host == "h"
    assert settings.home == Path("/srv/presence")
    assert settings.server_url == "https://presence.example:8443"
    assert settings.tz.key == "Europe/Berlin"
    assert settings.available_statuses == ("online", "accepting_chats")


def test_retention_and_read_replica_are_optional():
    assert load_settings({}).retention_months is None
    assert load_settings({}).read_database_url is None
    settings = load_settings(
        {"PRESENCE_RETENTION_MONTHS": " 13 ", "PRESENCE_READ_DATABASE_URL": "postgresql://r@h2/db"}
    )
    assert settings.retention_months == 13
    assert settings.read_database_url.host == "h2"
    assert settings.read_database_url.drivername == "postgresql+psycopg"


def test_flags_override_environment():
    env = {"PRESENCE_DATABASE_URL": "postgresql://u@h/db", "PRESENCE_TZ": "Europe/Berlin"}
    settings = load_settings(env, database_url="postgresql://x@other/db2", tz="Asia/Tokyo")
    assert settings.database_url.host == "other"
    assert settings.tz.key == "Asia/Tokyo"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PRESENCE_TZ": "Mars/Olympus"}, "unknown time zone"),
        ({"PRESENCE_SERVER_URL": "ftp://x"}, "not a server URL"),
        ({"PRESENCE_SERVER_URL": "http://h:99999"}, "bad port"),
        ({"PRESENCE_AVAILABLE_STATUSES": " , "}, "empty"),
        ({"PRESENCE_AVAILABLE_STATUSES": "online,offline"}, "cannot count as available"),
        ({"PRESENCE_RETENTION_MONTHS": "a year"}, "not a whole number of months"),
        ({"PRESENCE_RETENTION_MONTHS": "0"}, "must be at least 1"),
        ({"PRESENCE_READ_DATABASE_URL": "mysql://u@h/db"}, "unsupported database"),
    ],
)
def test_bad_settings(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_secrets_come_from_flags_files_or_variables_never_needing_the_command_line(tmp_path):
    from presence_core.config import load_settings

    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file-0123456789\n")
    token_file = tmp_path / "token"
    token_file.write_text("  tok-from-file \n")
    assert load_settings({}).auth_secret is None and load_settings({}).token is None
    by_file = load_settings({"PRESENCE_AUTH_SECRET_FILE": str(secret_file)})
    assert by_file.auth_secret == "from-a-file-0123456789"
    assert load_settings({"PRESENCE_TOKEN_FILE": str(token_file)}).token == "tok-from-file"
    # a flag wins over its file, which wins over the variables
    env = {"PRESENCE_AUTH_SECRET": "from-the-variable-0123"}
    assert load_settings(env).auth_secret == "from-the-variable-0123"
    assert load_settings(env, auth_secret_file=str(secret_file)).auth_secret.startswith("from-a")
    assert load_settings(env, auth_secret="flag").auth_secret == "flag"
    # and the secret never shows in the settings' repr (logs, tracebacks)
    assert "from-a-file" not in repr(by_file)


def test_bad_secret_files_and_ports_are_one_line(tmp_path):
    from presence_core.config import ConfigError, load_settings

    (tmp_path / "empty").write_text("\n")
    for env, words in [
        ({"PRESENCE_AUTH_SECRET_FILE": str(tmp_path / "missing")}, "no such file"),
        ({"PRESENCE_TOKEN_FILE": str(tmp_path / "empty")}, "is empty"),
        ({"PRESENCE_DB_PORT": "99999"}, "out of range"),
        ({"PRESENCE_DB_PORT": "x"}, "not a port"),
    ]:
        with pytest.raises(ConfigError, match=words) as caught:
            load_settings(env)
        assert "\n" not in str(caught.value)
