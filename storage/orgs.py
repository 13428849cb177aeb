"""Organizations and the containers registered inside them."""

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Row, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.cursors import encode_container_cursor
from storage.keys import add_key
from storage.models import containers, organizations, utcnow


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


async def get_org(session: AsyncSession, *, org_id: str) -> Row | None:
    query = select(organizations).where(organizations.c.id == org_id)
    return (await session.execute(query)).one_or_none()


async def get_container(session: AsyncSession, *, org_id: str, container_id: str) -> Row | None:
    query = select(containers).where(containers.c.org_id == org_id, containers.c.id == container_id)
    return (await session.execute(query)).one_or_none()


async def get_containers(
    session: AsyncSession, *, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Row]:
    """Containers by (org_id, container_id) in one statement."""
    if not keys:
        return {}
    query = select(containers).where(tuple_(containers.c.org_id, containers.c.id).in_(set(keys)))
    return {(row.org_id, row.id): row for row in (await session.execute(query)).all()}


@dataclass(frozen=True)
class ContainerPage:
    rows: Sequence[Row]
    next_cursor: str | None
    cursors: list[str]


async def list_containers(
    session: AsyncSession, *, org_id: str, limit: int, after_id: str | None = None
) -> ContainerPage:
    """An org's containers in id order, one keyset page at a time."""
    query = select(containers).where(containers.c.org_id == org_id)
    if after_id is not None:
        query = query.where(containers.c.id > after_id)
    rows = (await session.execute(query.order_by(containers.c.id).limit(limit + 1))).all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    cursors = [encode_container_cursor(row.id) for row in rows]
    return ContainerPage(rows=rows, next_cursor=cursors[-1] if has_more else None, cursors=cursors)
