"""Persistence of flagged records: SQLAlchemy models, Alembic migrations and the repository
functions the consumer, the CLI and the query API call. See docs/storage.md."""
