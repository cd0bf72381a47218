"""Registry changes numbered per topic: ``model_events.seq``, unique with the scope, so that two
changes made at once from the same roles (two promotions) cannot both be recorded: the second
one's insert fails and it is refused, instead of silently overriding the first.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("model_events", sa.Column("seq", sa.Integer(), nullable=True))
    # existing events numbered in their order, per scope
    op.execute(
        "UPDATE model_events SET seq = (SELECT count(*) FROM model_events AS earlier "
        "WHERE earlier.scope = model_events.scope AND earlier.id <= model_events.id)"
    )
    with op.batch_alter_table("model_events") as batch:
        batch.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint("uq_model_events_scope_seq", ["scope", "seq"])


def downgrade() -> None:
    with op.batch_alter_table("model_events") as batch:
        batch.drop_constraint("uq_model_events_scope_seq", type_="unique")
        batch.drop_column("seq")
