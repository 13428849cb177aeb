"""One async engine from one URL, with each dialect set up for serving."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlmodel import SQLModel

from storage import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from storage.driver import PostgresReaderPool, Reader, SQLiteReaderPool
from storage.orgs import OrgRecord, get_org
from storage.writer import EventWriter

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./events.db"
SQLITE_BUSY_TIMEOUT_MS = 5000
ORGS_KEPT = 4096  # organizations' records kept by Database.org

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def normalize_url(url: str) -> str:
    """Accept plain `sqlite:///x.db` or `postgresql://...` and pick the async driver."""
    parsed = make_url(url)
    if parsed.drivername in _ASYNC_DRIVERS:
        parsed = parsed.set(drivername=_ASYNC_DRIVERS[parsed.drivername])
    if parsed.drivername not in _ASYNC_DRIVERS.values():
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}; "
            "use sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db"
        )
    return parsed.render_as_string(hide_password=False)


def _dump_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # Every new connection: WAL lets readers run beside the writer, foreign keys are off by
    # default in SQLite, a busy timeout makes concurrent writers wait instead of failing, and
    # synchronous=FULL makes an acknowledged commit survive power loss, not only a crash.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


class Database:
    """One database URL: an engine and sessions for writes (events through `writer`, which
    commits concurrent writes together), driver connections for hot reads."""

    def __init__(
        self,
        url: str = DEFAULT_DATABASE_URL,
        *,
        echo: bool = False,
        read_pool_size: int = 2,
        group_commit: bool = True,
        pool_size: int = 5,
        pool_max_overflow: int = 10,
        pool_timeout: float = 30.0,
    ) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        if parsed.drivername.startswith("sqlite") and parsed.database in (None, "", ":memory:"):
            raise ValueError("SQLite needs a file: each connection to :memory: is its own database")
        # Sized for PostgreSQL only: SQLite keeps SQLAlchemy's defaults for a file, since its
        # writes take turns whatever the pool, and its hot reads have their own pool.
        pool: dict[str, Any] = {}
        if parsed.drivername.startswith("postgresql"):
            pool = {
                "pool_size": pool_size,
                "max_overflow": pool_max_overflow,
                "pool_timeout": pool_timeout,
            }
        self.engine: AsyncEngine = create_async_engine(
            self.url,
            echo=echo,
            # Bound parameters (event details, key hashes) stay out of exception text and logs.
            hide_parameters=True,
            json_serializer=_dump_json,
            json_deserializer=orjson.loads,
            **pool,
        )
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _configure_sqlite)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._readers: SQLiteReaderPool | PostgresReaderPool | None = None
        self._read_pool_size = read_pool_size
        self._readers_opening = asyncio.Lock()
        self._orgs: dict[str, OrgRecord] = {}
        self.writer = EventWriter(self.session, group_commit=group_commit)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[Reader]:
        """A driver connection for the hot read functions (list_events and friends)."""
        pool = self._readers or await self._open_readers()
        async with pool.reader() as reader:
            yield reader

    async def org(self, org_id: str) -> OrgRecord | None:
        """The organization's record, read once: nothing renames or removes an organization
        (no statement updates or deletes its table), so a record once found stays true. Only
        found ones are kept, so an org created after a miss is found at once. A read of the
        org costs a page request about a fifth of its time on SQLite (issue 15)."""
        found = self._orgs.get(org_id)
        if found is None:
            async with self.reader() as reader:
                found = await get_org(reader, org_id=org_id)
            if found is not None:
                if len(self._orgs) >= ORGS_KEPT:
                    del self._orgs[next(iter(self._orgs))]
                self._orgs[org_id] = found
        return found

    async def _open_readers(self) -> SQLiteReaderPool | PostgresReaderPool:
        async with self._readers_opening:
            if self._readers is None:
                parsed = make_url(self.url)
                dialect = self.engine.dialect
                pool: SQLiteReaderPool | PostgresReaderPool
                if self.dialect == "sqlite":
                    assert parsed.database is not None
                    pool = SQLiteReaderPool(
                        parsed.database,
                        dialect,
                        size=self._read_pool_size,
                        busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS,
                    )
                else:
                    pool = PostgresReaderPool(parsed, dialect, size=self._read_pool_size)
                await pool.open()
                self._readers = pool
            return self._readers

    async def create_schema(self) -> None:
        """Create any missing tables and indexes."""
        async with self.engine.begin() as connection:
            await connection.run_sync(SQLModel.metadata.create_all)

    async def drop_schema(self) -> None:
        async with self.engine.begin() as connection:
            await connection.run_sync(SQLModel.metadata.drop_all)

    async def dispose(self) -> None:
        await self.writer.drain()
        if self._readers is not None:
            await self._readers.close()
            self._readers = None
        await self.engine.dispose()
