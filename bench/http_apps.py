"""The comparison servers of bench/http.py, each an ASGI app uvicorn can import.

- `ceiling`: a plain Starlette endpoint returning a constant JSON body, the most a Python
  ASGI server here can answer.
- `raw_driver`: the same 100-event page the gateway serves, read with aiosqlite (asyncpg on
  PostgreSQL) and encoded with orjson, with no auth and no conversion: the floor of what
  storage costs.
- `default_strawberry`: a default Strawberry app over the same storage, the way a first
  version is written (SQLAlchemy's async session, async resolvers, no parser or validation
  caches, the standard JSON encoder). The gateway's GraphQL is compared against it.

The page and the database come from the environment (BENCH_DATABASE_URL, BENCH_ORG).
"""

import asyncio
import os
from datetime import datetime
from typing import Any

import aiosqlite
import asyncpg
import orjson
import strawberry
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlmodel import col, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from strawberry.asgi import GraphQL
from strawberry.scalars import JSON

from storage.domain import Order
from storage.driver import asyncpg_dsn, compile_query
from storage.events import PageShape
from storage.models import Event as EventModel
from storage.models import events

DATABASE_URL = make_url(
    os.environ.get("BENCH_DATABASE_URL", "sqlite+aiosqlite:///bench/data/events-100000.db")
)
DIALECT = DATABASE_URL.get_backend_name()  # "sqlite" or "postgresql"
ORG_ID = os.environ.get("BENCH_ORG", "bench")
PAGE_SIZE = 100

CONSTANT = orjson.dumps({"events": [], "next_cursor": None, "message": "constant"})


async def constant(_request: Request) -> Response:
    return Response(CONSTANT, media_type="application/json")


ceiling = Starlette(routes=[Route("/", constant)])


# The statement the gateway runs for the same page, compiled by storage, run without it.
_PAGE = compile_query(
    PageShape(None, False, False, False, False, Order.DESC).statement(DIALECT),
    sqlite.dialect() if DIALECT == "sqlite" else postgresql.asyncpg.dialect(),
)
_COLUMNS = tuple(events.c.keys())
_connection: aiosqlite.Connection | None = None
# The gateway's own PostgreSQL read pool holds two connections: so does the floor's.
_pool: asyncpg.Pool | None = None
_opening = asyncio.Lock()


async def _fetch(parameters: list[Any]) -> list[Any]:
    global _connection, _pool
    if _connection is None and _pool is None:
        async with _opening:
            if DIALECT == "sqlite" and _connection is None:
                _connection = await aiosqlite.connect(DATABASE_URL.database or "")
            elif DIALECT != "sqlite" and _pool is None:
                _pool = await asyncpg.create_pool(asyncpg_dsn(DATABASE_URL), min_size=2, max_size=2)
    if _pool is not None:
        async with _pool.acquire() as connection:
            return list(await connection.fetch(_PAGE.sql, *parameters))
    assert _connection is not None
    return list(await _connection.execute_fetchall(_PAGE.sql, parameters))


async def raw_page(_request: Request) -> Response:
    rows = await _fetch(_PAGE.parameters({"org_id": ORG_ID, "limit": PAGE_SIZE}))
    body = {"events": [dict(zip(_COLUMNS, row, strict=True)) for row in rows]}
    return Response(orjson.dumps(body), media_type="application/json")


raw_driver = Starlette(routes=[Route("/", raw_page)])


_engine = create_async_engine(DATABASE_URL)
_sessions = async_sessionmaker(_engine, expire_on_commit=False)


@strawberry.type
class BaselineEvent:
    id: strawberry.ID
    container_id: str
    event_type: str
    status: str
    timestamp: datetime
    received_at: datetime
    actor: str | None
    details: JSON | None


@strawberry.type
class BaselineOrganization:
    id: strawberry.ID

    @strawberry.field
    async def events(self, first: int = 100) -> list[BaselineEvent]:
        session: AsyncSession
        async with _sessions() as session:
            query = (
                select(EventModel)
                .where(EventModel.org_id == str(self.id))
                .order_by(col(EventModel.id).desc())
                .limit(first)
            )
            found = (await session.execute(query)).scalars().all()
        return [
            BaselineEvent(
                id=strawberry.ID(str(event.id)),
                container_id=event.container_id,
                event_type=event.event_type,
                status=event.status,
                timestamp=event.timestamp,
                received_at=event.received_at,
                actor=event.actor,
                details=event.details,
            )
            for event in found
        ]


@strawberry.type
class BaselineQuery:
    @strawberry.field
    async def org(self, id: strawberry.ID) -> BaselineOrganization:
        return BaselineOrganization(id=id)


default_strawberry: Any = GraphQL(strawberry.Schema(query=BaselineQuery))
