"""Alembic environment, driven from code by ``storage.database.upgrade``: the caller passes an
open connection in ``config.attributes["connection"]`` so migrations run on exactly the engine
(SQLite file or PostgreSQL) the caller configured, inside the caller's transaction."""

from alembic import context

from storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "storage migrations need an open connection: run them with "
        "storage.database.upgrade(url) or `latentwatch db upgrade --db URL`, not the alembic CLI"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,  # lets `command.revision(..., autogenerate=True)` diff
    # SQLite cannot ALTER most things; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
