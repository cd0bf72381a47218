"""Kafka keys as bytes: flagged_records.key becomes the key's exact bytes (bytea / BLOB), and
the text it held moves to key_text, the readable form (UTF-8 text, else hex).

Existing rows keep their text as key_text and get its UTF-8 bytes as key. Keys that were not
UTF-8 had been stored with replacement characters before this revision: their original bytes
were lost then and cannot be recovered here. Downgrading keeps the readable form only.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The UTF-8 bytes of the text, per dialect (SQLite's text is UTF-8: a cast gives its bytes).
_TEXT_TO_BYTES = {"postgresql": "convert_to(key_text, 'UTF8')", "sqlite": "CAST(key_text AS BLOB)"}


def upgrade() -> None:
    # Two steps: SQLite's batch mode rebuilds the table, and one step would see two "key"s.
    with op.batch_alter_table("flagged_records") as batch:
        batch.alter_column(
            "key", new_column_name="key_text", existing_type=sa.Text(), existing_nullable=True
        )
    with op.batch_alter_table("flagged_records") as batch:
        batch.add_column(sa.Column("key", sa.LargeBinary(), nullable=True))
    to_bytes = _TEXT_TO_BYTES[op.get_bind().dialect.name]
    op.execute(f"UPDATE flagged_records SET key = {to_bytes} WHERE key_text IS NOT NULL")  # noqa: S608


def downgrade() -> None:
    with op.batch_alter_table("flagged_records") as batch:
        batch.drop_column("key")
    with op.batch_alter_table("flagged_records") as batch:
        batch.alter_column(
            "key_text", new_column_name="key", existing_type=sa.Text(), existing_nullable=True
        )
