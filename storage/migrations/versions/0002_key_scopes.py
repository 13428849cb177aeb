"""API keys get scopes; events record the key that wrote them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Keys made before scopes existed could read and write: they keep doing so.
    op.add_column(
        "api_keys",
        sa.Column("scopes", sa.String(length=32), server_default="read write", nullable=False),
    )
    op.add_column("events", sa.Column("key_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    op.drop_column("events", "key_id")
    op.drop_column("api_keys", "scopes")
