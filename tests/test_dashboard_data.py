"""The dashboard's one loader (presence_core.dashboard.data.load): results cached per
database, function and arguments, for the freshness asked, on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import streamlit as st
from presence_core.dashboard import data

from presence_core import analytics
from presence_core.database.storage import Transition, write_batch


@pytest.fixture
def dashboard_db(engine, database_url, monkeypatch, tmp_path):
    monkeypatch.setenv("PRESENCE_DATABASE_URL", database_url.render_as_string(hide_password=False))
    monkeypatch.setenv("PRESENCE_HOME", str(tmp_path / "home"))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield engine
    st.cache_data.clear()
    st.cache_resource.clear()


def add(engine, user: str, name: str) -> None:
    now = datetime.now(UTC)
    write_batch(engine, [Transition(user, "online", now, now, user_name=name)])


def test_load_caches_per_function_and_arguments(dashboard_db):
    add(dashboard_db, "a", "Ann")
    assert data.load(analytics.user_names) == {"a": "Ann"}
    add(dashboard_db, "b", "Bea")
    assert data.load(analytics.user_names) == {"a": "Ann"}  # cached
    # other arguments, or another freshness, are other entries
    assert data.load(analytics.user_names, include_hidden=True) == {"a": "Ann", "b": "Bea"}
    assert data.load(analytics.user_names, ttl=data.LIVE_TTL) == {"a": "Ann", "b": "Bea"}
    # another function with the same arguments is never confused with it
    assert data.load(analytics.filter_choices)["user_id"] == ["a", "b"]
    data.clear()
    assert data.load(analytics.user_names) == {"a": "Ann", "b": "Bea"}
    with pytest.raises(ValueError, match="ttl must be one of"):
        data.load(analytics.user_names, ttl=7)


def test_load_keys_include_the_database(dashboard_db, monkeypatch, tmp_path):
    add(dashboard_db, "a", "Ann")
    assert data.load(analytics.user_names) == {"a": "Ann"}
    # a database that does not answer: DatabaseDown, and nothing cached from before
    monkeypatch.setenv("PRESENCE_DATABASE_URL", "postgresql://nobody:x@127.0.0.1:1/none")
    with pytest.raises(data.DatabaseDown):
        data.load(analytics.user_names)
