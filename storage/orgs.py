"""Organizations and the containers registered inside them."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Integer, Row, Select, String, any_, bindparam, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.cursors import encode_container_cursor
from storage.driver import Reader
from storage.keys import add_key
from storage.models import containers, organizations, utcnow


class OrgRecord(NamedTuple):
    id: str
    name: str
    created_at: datetime


class ContainerRecord(NamedTuple):
    org_id: str
    id: str
    created_at: datetime
    last_event_at: datetime | None


class OrganizationExists(Exception):
    """An organization with that id is already registered."""


async def create_org(
    session: AsyncSession, *, org_id: str, name: str | None = None
) -> tuple[Row, str]:
    """Register an organization (name defaults to its id) with its first API key, atomically.

    Returns the key's row and its secret, which is never stored and cannot be shown again.
    """
    statement = organizations.insert().values(id=org_id, name=name or org_id, created_at=utcnow())
    try:
        await session.execute(statement)
        key, secret = await add_key(session, org_id=org_id)
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise OrganizationExists(org_id) from None
    return key, secret


def _org_by_id() -> Select[Any]:
    return select(organizations).where(organizations.c.id == bindparam("org_id"))


def _container_by_id() -> Select[Any]:
    return select(containers).where(
        containers.c.org_id == bindparam("org_id"), containers.c.id == bindparam("container_id")
    )


async def get_org(reader: Reader, *, org_id: str) -> OrgRecord | None:
    rows = await reader.fetch("org_by_id", _org_by_id, {"org_id": org_id})
    return OrgRecord._make(rows[0]) if rows else None


async def get_container(
    reader: Reader, *, org_id: str, container_id: str
) -> ContainerRecord | None:
    values = {"org_id": org_id, "container_id": container_id}
    rows = await reader.fetch("container_by_id", _container_by_id, values)
    return ContainerRecord._make(rows[0]) if rows else None


async def get_containers(
    reader: Reader, *, org_id: str, container_ids: Sequence[str]
) -> dict[str, ContainerRecord]:
    """An org's containers by id, in one statement."""
    wanted = sorted(set(container_ids))
    if not wanted:
        return {}
    if reader.dialect.name == "postgresql":
        # One array parameter: one statement for any number of ids. A generic plan for
        # `id IN ($2, ..., $65)` was seen scanning the org's containers (4.7 ms, against
        # 0.18 ms for `id = ANY($2::varchar[])` seeking each id in the primary key; issue 15).
        values = {"org_id": org_id, "ids": wanted}
        rows = await reader.fetch("containers_by_id_array", _containers_by_id_array, values)
    else:
        rows = await _sqlite_containers_by_ids(reader, org_id, wanted)
    return {row[1]: ContainerRecord._make(row) for row in rows}


def _containers_by_id_array() -> Select[Any]:
    return select(containers).where(
        containers.c.org_id == bindparam("org_id"),
        containers.c.id == any_(bindparam("ids", type_=postgresql.ARRAY(String()))),
    )


async def _sqlite_containers_by_ids(
    reader: Reader, org_id: str, wanted: list[str]
) -> list[tuple[Any, ...]]:
    # SQLite takes no array: the statement is compiled once per shape, so the id count is
    # rounded up to a power of two (repeating the last id) and a handful of shapes serve
    # every page size.
    size = 1 << (len(wanted) - 1).bit_length()
    values: dict[str, Any] = {"org_id": org_id}
    values.update({f"id_{i}": wanted[min(i, len(wanted) - 1)] for i in range(size)})

    def statement() -> Select[Any]:
        ids = [bindparam(f"id_{i}", type_=String()) for i in range(size)]
        return select(containers).where(
            containers.c.org_id == bindparam("org_id"), containers.c.id.in_(ids)
        )

    return await reader.fetch(("containers_by_ids", size), statement, values)


@dataclass(frozen=True)
class ContainerPage:
    rows: Sequence[ContainerRecord]
    next_cursor: str | None
    cursors: list[str]


async def list_containers(
    reader: Reader, *, org_id: str, limit: int, after_id: str | None = None
) -> ContainerPage:
    """An org's containers in id order, one keyset page at a time."""

    def statement() -> Select[Any]:
        query = select(containers).where(containers.c.org_id == bindparam("org_id"))
        if after_id is not None:
            query = query.where(containers.c.id > bindparam("after_id"))
        return query.order_by(containers.c.id).limit(bindparam("limit", type_=Integer()))

    values = {"org_id": org_id, "after_id": after_id, "limit": limit + 1}
    fetched = await reader.fetch(("containers", after_id is not None), statement, values)
    rows = [ContainerRecord._make(row) for row in fetched]
    has_more = len(rows) > limit
    rows = rows[:limit]
    cursors = [encode_container_cursor(row.id) for row in rows]
    return ContainerPage(rows=rows, next_cursor=cursors[-1] if has_more else None, cursors=cursors)
