"""Factories that build test data through the storage functions the gateway uses."""

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from storage.database import Database
from storage.domain import NewEvent
from storage.events import EventRecord, log_events
from storage.keys import DEFAULT_SCOPES, Scope, create_key, hash_key, holder_of_key
from storage.models import Event
from storage.orgs import create_org

BASE_TIME = datetime(2023, 11, 18, 12, 0, tzinfo=UTC)


async def make_org(db: Database, org_id: str, name: str | None = None) -> str:
    """Create an org; returns its first API key."""
    async with db.session() as session:
        _key, secret = await create_org(session, org_id=org_id, name=name)
    return secret


async def make_key(db: Database, org_id: str, scopes: frozenset[Scope] = DEFAULT_SCOPES) -> str:
    """Another API key for an existing org, with these scopes; returns its secret."""
    async with db.session() as session:
        _key, secret = await create_key(session, org_id=org_id, scopes=scopes)
    return secret


async def key_id_of(db: Database, secret: str) -> str:
    """The id of the key with this secret (what events record), never the secret."""
    async with db.reader() as reader:
        holder = await holder_of_key(reader, key_hash=hash_key(secret))
    assert holder is not None, "no such active key"
    return holder.key_id


def new_event(index: int = 0, **fields: Any) -> NewEvent:
    """A valid event, one minute after BASE_TIME per index unless fields say otherwise."""
    values: dict[str, Any] = {
        "event_type": "ACCESS",
        "timestamp": BASE_TIME + timedelta(minutes=index),
    }
    values.update(fields)
    return NewEvent.model_validate(values)


async def make_events(
    db: Database, org_id: str, specs: list[tuple[str, dict[str, Any]]]
) -> list[EventRecord]:
    """Store (container_id, fields) specs in order; event i gets timestamp BASE_TIME + i min."""
    items = [(container, new_event(i, **fields)) for i, (container, fields) in enumerate(specs)]
    async with db.session() as session:
        return await log_events(session, org_id=org_id, items=items)


async def count_events(db: Database) -> int:
    async with db.session() as session:
        return (await session.execute(select(func.count()).select_from(Event))).scalar_one()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
