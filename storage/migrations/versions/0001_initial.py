"""The schema as create_schema() made it before there were migrations.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The column types as the database stores them, frozen here rather than imported from
# storage.models, whose types may change in later revisions.
_UTC_TIME = sa.DateTime(timezone=True)
# SQLite only makes INTEGER PRIMARY KEY the rowid (with AUTOINCREMENT: never reused).
_EVENT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ORG_ID = sa.String(length=128)
_CONTAINER_ID = sa.String(length=128)
_EVENT_TYPE = sa.String(length=16)
_STATUS = sa.String(length=16)


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", _ORG_ID, nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("created_at", _UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "containers",
        sa.Column("org_id", _ORG_ID, nullable=False),
        sa.Column("id", _CONTAINER_ID, nullable=False),
        sa.Column("created_at", _UTC_TIME, nullable=False),
        sa.Column("last_event_at", _UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"]),
        sa.PrimaryKeyConstraint("org_id", "id"),
    )
    op.create_table(
        "events",
        sa.Column("id", _EVENT_ID, nullable=False),
        sa.Column("org_id", _ORG_ID, nullable=False),
        sa.Column("container_id", _CONTAINER_ID, nullable=False),
        sa.Column("event_type", _EVENT_TYPE, nullable=False),
        sa.Column("status", _STATUS, nullable=False),
        sa.Column("timestamp", _UTC_TIME, nullable=False),
        sa.Column("received_at", _UTC_TIME, nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["org_id", "container_id"], ["containers.org_id", "containers.id"]),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_org", "events", ["org_id", "id", "timestamp"])
    op.create_index("ix_events_org_type", "events", ["org_id", "event_type", "id", "timestamp"])
    op.create_index("ix_events_org_status", "events", ["org_id", "status", "id", "timestamp"])
    op.create_index(
        "ix_events_org_container", "events", ["org_id", "container_id", "id", "timestamp"]
    )
    op.create_index(
        "ix_events_org_time",
        "events",
        ["org_id", "timestamp", "event_type", "status", "container_id"],
    )
    op.create_table(
        "event_zones",
        sa.Column("org_id", _ORG_ID, nullable=False),
        sa.Column("span_seconds", sa.Integer(), nullable=False),
        sa.Column("start", _UTC_TIME, nullable=False),
        sa.Column("min_id", _EVENT_ID, nullable=False),
        sa.Column("max_id", _EVENT_ID, nullable=False),
        sa.PrimaryKeyConstraint("org_id", "span_seconds", "start"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "late_events",
        sa.Column("id", _EVENT_ID, nullable=False),
        sa.Column("org_id", _ORG_ID, nullable=False),
        sa.Column("timestamp", _UTC_TIME, nullable=False),
        sa.Column("container_id", _CONTAINER_ID, nullable=False),
        sa.Column("event_type", _EVENT_TYPE, nullable=False),
        sa.Column("status", _STATUS, nullable=False),
        sa.ForeignKeyConstraint(["id"], ["events.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_late_events_org_time",
        "late_events",
        ["org_id", "timestamp", "id", "event_type", "status", "container_id"],
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("org_id", _ORG_ID, nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", _UTC_TIME, nullable=False),
        sa.Column("revoked_at", _UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_index("ix_api_keys_org_id", "api_keys", ["org_id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("org_id", _ORG_ID, nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_digest", sa.String(length=64), nullable=False),
        sa.Column("event_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", _UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"]),
        sa.PrimaryKeyConstraint("org_id", "key"),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])
    op.create_table(
        "event_counts_by_org",
        sa.Column("org_id", _ORG_ID, nullable=False),
        sa.Column("event_type", _EVENT_TYPE, nullable=False),
        sa.Column("status", _STATUS, nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "event_type", "status"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "event_counts_by_container",
        sa.Column("org_id", _ORG_ID, nullable=False),
        sa.Column("container_id", _CONTAINER_ID, nullable=False),
        sa.Column("event_type", _EVENT_TYPE, nullable=False),
        sa.Column("status", _STATUS, nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "container_id", "event_type", "status"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "event_counts_by_org_hour",
        sa.Column("org_id", _ORG_ID, nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("event_type", _EVENT_TYPE, nullable=False),
        sa.Column("status", _STATUS, nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "hour", "event_type", "status"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "event_counts_by_container_hour",
        sa.Column("org_id", _ORG_ID, nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("container_id", _CONTAINER_ID, nullable=False),
        sa.Column("event_type", _EVENT_TYPE, nullable=False),
        sa.Column("status", _STATUS, nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "hour", "container_id", "event_type", "status"),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ix_event_counts_by_container_hour_container",
        "event_counts_by_container_hour",
        ["org_id", "container_id", "hour"],
    )
    op.create_table(
        "event_totals_by_container_hour",
        sa.Column("org_id", _ORG_ID, nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("container_id", _CONTAINER_ID, nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "hour", "container_id"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "event_totals_by_container_day",
        sa.Column("org_id", _ORG_ID, nullable=False),
        sa.Column("start_hour", sa.Integer(), nullable=False),
        sa.Column("container_id", _CONTAINER_ID, nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "start_hour", "container_id"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    # Children before the tables their foreign keys name; indexes go with their tables.
    for table in (
        "event_totals_by_container_day",
        "event_totals_by_container_hour",
        "event_counts_by_container_hour",
        "event_counts_by_org_hour",
        "event_counts_by_container",
        "event_counts_by_org",
        "idempotency_keys",
        "api_keys",
        "late_events",
        "event_zones",
        "events",
        "containers",
        "organizations",
    ):
        op.drop_table(table)
