"""SQLModel tables: organizations, their containers, events, API keys and event counts."""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    Table,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect (SQLite keeps naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is UTC:
            return value
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name == "sqlite":
            # Every stored event binds two times: formatting the UTC text in one step costs a
            # third of the generic chain (zone conversion, then SQLAlchemy's DATETIME format).
            return _sqlite_utc_text
        return super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.name == "sqlite":
            # Every page decodes two times per row: parsing SQLite's UTC text with its offset
            # in one step costs a fifth of parsing it naive and then attaching the zone.
            return _sqlite_utc
        return super().result_processor(dialect, coltype)


def _sqlite_utc_text(value: datetime | None) -> str | None:
    """SQLAlchemy's SQLite DATETIME text of the time in UTC: 2023-11-18 12:00:00.000000."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


def _sqlite_utc(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value + "+00:00")


def utcnow() -> datetime:
    return datetime.now(UTC)


# SQLite only makes INTEGER PRIMARY KEY the rowid (with AUTOINCREMENT: never reused).
EventId = BigInteger().with_variant(Integer(), "sqlite")


class Organization(SQLModel, table=True):
    __tablename__ = "organizations"

    id: str = Field(primary_key=True, max_length=128)
    name: str
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Container(SQLModel, table=True):
    __tablename__ = "containers"

    org_id: str = Field(primary_key=True, foreign_key="organizations.id", max_length=128)
    id: str = Field(primary_key=True, max_length=128)
    created_at: datetime = Field(sa_type=UTCDateTime)
    last_event_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (
        ForeignKeyConstraint(["org_id", "container_id"], ["containers.org_id", "containers.id"]),
        # One index per read path, each ordered by id after its equality columns so pages are
        # keyset range scans. The timestamp after the id lets a time-window page test the rows
        # it walks past at the window's edges from the index alone (storage/windows.py).
        Index("ix_events_org", "org_id", "id", "timestamp"),
        Index("ix_events_org_type", "org_id", "event_type", "id", "timestamp"),
        Index("ix_events_org_status", "org_id", "status", "id", "timestamp"),
        Index("ix_events_org_container", "org_id", "container_id", "id", "timestamp"),
        # Counts over a time window (storage/counts.py): a range scan that covers every column
        # the counts filter or group by, so no table row is read.
        Index("ix_events_org_time", "org_id", "timestamp", "event_type", "status", "container_id"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, sa_column=Column(EventId, primary_key=True))
    org_id: str = Field(max_length=128)
    container_id: str = Field(max_length=128)
    event_type: str = Field(max_length=16)
    status: str = Field(max_length=16)
    timestamp: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    actor: str | None = Field(default=None, max_length=256)
    details: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    # The API key that wrote it (its id, never the secret); None when written without one
    # (the CLI, the demo, events stored before keys were recorded).
    key_id: str | None = Field(default=None, max_length=32)


class EventZone(SQLModel, table=True):
    """The id range of an org's events stamped within one minute or one hour (storage/windows.py).

    Events stamped long before or after they were received are left out (see LateEvent), so a
    zone's ids stay as close together as the events' arrival.
    """

    __tablename__ = "event_zones"
    # Stored in key order: a window's bounds are range scans over its zones, which then read
    # min_id and max_id from the rows they scan instead of looking each one up.
    __table_args__ = {"sqlite_with_rowid": False}

    org_id: str = Field(primary_key=True, max_length=128)
    span_seconds: int = Field(primary_key=True)
    start: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    min_id: int = Field(sa_type=EventId)
    max_id: int = Field(sa_type=EventId)


class LateEvent(SQLModel, table=True):
    """An event whose timestamp is far from when it was received: a window page reads these
    beside its zones' id range (storage/windows.py).

    It repeats the event's columns that pages select by, so that the late events of a window
    are picked from their index alone, whatever the page's filter or container.
    """

    __tablename__ = "late_events"
    __table_args__ = (
        Index(
            "ix_late_events_org_time",
            "org_id",
            "timestamp",
            "id",
            "event_type",
            "status",
            "container_id",
        ),
    )

    id: int = Field(sa_column=Column(EventId, ForeignKey("events.id"), primary_key=True))
    org_id: str = Field(max_length=128)
    timestamp: datetime = Field(sa_type=UTCDateTime)
    container_id: str = Field(max_length=128)
    event_type: str = Field(max_length=16)
    status: str = Field(max_length=16)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=32)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=128)
    key_hash: str = Field(unique=True, max_length=64)
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # What the key may do (storage.keys.Scope), space-separated: "read write" by default.
    scopes: str = Field(
        default="read write", max_length=32, sa_column_kwargs={"server_default": "read write"}
    )


class IdempotencyKey(SQLModel, table=True):
    """A write made with an Idempotency-Key: what was asked (a digest) and the events stored.

    Written in the transaction that stores the events, so a key is taken exactly when its
    events exist. Kept at least storage.idempotency.KEEP_KEYS, then pruned.
    """

    __tablename__ = "idempotency_keys"

    org_id: str = Field(foreign_key="organizations.id", primary_key=True, max_length=128)
    key: str = Field(primary_key=True, max_length=255)
    request_digest: str = Field(max_length=64)
    event_ids: list[int] = Field(sa_type=JSON)
    created_at: datetime = Field(sa_type=UTCDateTime, index=True)


# Event counts rolled up as events are stored (storage/counts.py), in the same transaction, so
# a count read from them always equals a COUNT over `events`. Each is keyed by what a count
# selects or groups on; `hour` is the hour the event's timestamp falls in, as whole hours since
# 1970-01-01T00:00Z (UTC; earlier hours are negative). WITHOUT ROWID on SQLite: the table is
# its primary key, so a range of it is read without a second lookup.
class OrgEventCount(SQLModel, table=True):
    __tablename__ = "event_counts_by_org"
    __table_args__ = ({"sqlite_with_rowid": False},)

    org_id: str = Field(primary_key=True, max_length=128)
    event_type: str = Field(primary_key=True, max_length=16)
    status: str = Field(primary_key=True, max_length=16)
    event_count: int = Field(sa_type=BigInteger)


class ContainerEventCount(SQLModel, table=True):
    __tablename__ = "event_counts_by_container"
    __table_args__ = ({"sqlite_with_rowid": False},)

    org_id: str = Field(primary_key=True, max_length=128)
    container_id: str = Field(primary_key=True, max_length=128)
    event_type: str = Field(primary_key=True, max_length=16)
    status: str = Field(primary_key=True, max_length=16)
    event_count: int = Field(sa_type=BigInteger)


class OrgHourEventCount(SQLModel, table=True):
    __tablename__ = "event_counts_by_org_hour"
    __table_args__ = ({"sqlite_with_rowid": False},)

    org_id: str = Field(primary_key=True, max_length=128)
    hour: int = Field(primary_key=True)
    event_type: str = Field(primary_key=True, max_length=16)
    status: str = Field(primary_key=True, max_length=16)
    event_count: int = Field(sa_type=BigInteger)


class ContainerHourEventCount(SQLModel, table=True):
    __tablename__ = "event_counts_by_container_hour"
    __table_args__ = (
        # One container's hours, for counts that name a container.
        Index("ix_event_counts_by_container_hour_container", "org_id", "container_id", "hour"),
        {"sqlite_with_rowid": False},
    )

    org_id: str = Field(primary_key=True, max_length=128)
    hour: int = Field(primary_key=True)
    container_id: str = Field(primary_key=True, max_length=128)
    event_type: str = Field(primary_key=True, max_length=16)
    status: str = Field(primary_key=True, max_length=16)
    event_count: int = Field(sa_type=BigInteger)


class ContainerHourTotal(SQLModel, table=True):
    """Every type and status together: a third fewer rows to add up by container than above."""

    __tablename__ = "event_totals_by_container_hour"
    __table_args__ = ({"sqlite_with_rowid": False},)

    org_id: str = Field(primary_key=True, max_length=128)
    hour: int = Field(primary_key=True)
    container_id: str = Field(primary_key=True, max_length=128)
    event_count: int = Field(sa_type=BigInteger)


class ContainerDayTotal(SQLModel, table=True):
    """The same over the 24 hours from `start_hour`, a multiple of 6 (00, 06, 12, 18 UTC).

    Each hour lies in four of these days, so a window of a day is one of them and at most three
    hours at either end: a busy org's containers take fewer rows a day than an hour each.
    """

    __tablename__ = "event_totals_by_container_day"
    __table_args__ = ({"sqlite_with_rowid": False},)

    org_id: str = Field(primary_key=True, max_length=128)
    start_hour: int = Field(primary_key=True)
    container_id: str = Field(primary_key=True, max_length=128)
    event_count: int = Field(sa_type=BigInteger)


# Core handles on the same tables: reads and writes use rows, not ORM instances.
organizations: Table = Organization.__table__  # type: ignore[attr-defined]
containers: Table = Container.__table__  # type: ignore[attr-defined]
events: Table = Event.__table__  # type: ignore[attr-defined]
event_zones: Table = EventZone.__table__  # type: ignore[attr-defined]
late_events: Table = LateEvent.__table__  # type: ignore[attr-defined]
api_keys: Table = ApiKey.__table__  # type: ignore[attr-defined]
idempotency_keys: Table = IdempotencyKey.__table__  # type: ignore[attr-defined]
counts_by_org: Table = OrgEventCount.__table__  # type: ignore[attr-defined]
counts_by_container: Table = ContainerEventCount.__table__  # type: ignore[attr-defined]
counts_by_org_hour: Table = OrgHourEventCount.__table__  # type: ignore[attr-defined]
counts_by_container_hour: Table = ContainerHourEventCount.__table__  # type: ignore[attr-defined]
totals_by_container_hour: Table = ContainerHourTotal.__table__  # type: ignore[attr-defined]
totals_by_container_day: Table = ContainerDayTotal.__table__  # type: ignore[attr-defined]
