"""The Alembic environment: the only place that creates or changes tables."""
