"""Hot reads, and SQLite's writes, on the database driver's own connections.

SQLAlchemy's async session costs several times the raw driver per statement. Hot read paths
therefore build their statements with SQLAlchemy Core, compile them once per dialect, and run
the compiled SQL on a small pool of aiosqlite or asyncpg connections. Writes on SQLite run
their compiled statements on the session's own driver connection (`execute_many`), inside the
session's transaction: SQLAlchemy's work per written row costs several times SQLite's.
"""

import asyncio
import sqlite3
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, cast

import aiosqlite
import asyncpg
import orjson
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class CompiledQuery:
    """SQL text for one dialect, its positional parameters in order, and how to convert values.

    The conversions are the column types' own bind and result processors, so values cross the
    raw driver exactly as they would cross SQLAlchemy (UTC times, JSON, ...).
    """

    sql: str
    names: tuple[str, ...]
    defaults: Mapping[str, Any]
    binders: Mapping[str, Processor]
    decoders: tuple[tuple[int, Processor], ...]

    def parameters(self, values: Mapping[str, Any]) -> list[Any]:
        ordered = []
        for name in self.names:
            value = values[name] if name in values else self.defaults[name]
            binder = self.binders.get(name)
            ordered.append(value if binder is None or value is None else binder(value))
        return ordered

    def iter_parameters(self, rows: Sequence[Mapping[str, Any]]) -> Iterator[list[Any]]:
        """`parameters` of many rows that each hold a value for every parameter (a write), one
        row at a time as they are consumed."""
        conversions = [
            (index, binder)
            for index, name in enumerate(self.names)
            if (binder := self.binders.get(name)) is not None
        ]
        picked = _picker(self.names)
        # Rows written together often share a value (the time they were received): a value
        # that is the very object of the row before is converted once.
        last: dict[int, tuple[Any, Any]] = {}
        for row in rows:
            values = list(picked(row))
            for index, binder in conversions:
                value = values[index]
                if value is None:
                    continue
                seen = last.get(index)
                if seen is not None and seen[0] is value:
                    values[index] = seen[1]
                else:
                    values[index] = binder(value)
                    last[index] = (value, values[index])
            yield values

    def decode(self, rows: Sequence[Any]) -> list[tuple[Any, ...]]:
        if not self.decoders:
            return [tuple(row) for row in rows]
        decoded = []
        for row in rows:
            values = list(row)
            for index, decoder in self.decoders:
                values[index] = decoder(values[index])
            decoded.append(tuple(values))
        return decoded


def _picker(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A function that takes a row's values of `names`, in order, as a tuple."""
    if len(names) == 1:
        [name] = names
        return lambda row: (row[name],)
    return itemgetter(*names)


def compile_query(
    statement: ClauseElement, dialect: Dialect, column_keys: Sequence[str] | None = None
) -> CompiledQuery:
    """Compile a Core statement whose variable parts are named bindparams (for an INSERT, the
    `column_keys` it is given values for)."""
    compiled = cast(
        SQLCompiler,
        statement.compile(
            dialect=dialect, column_keys=None if column_keys is None else list(column_keys)
        ),
    )
    binders = {
        name: binder
        for name, bind in compiled.binds.items()
        if (binder := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
    }
    columns = getattr(statement, "selected_columns", ())
    decoders = tuple(
        (index, decoder)
        for index, column in enumerate(columns)
        if (decoder := column.type.dialect_impl(dialect).result_processor(dialect, None))
        is not None
    )
    return CompiledQuery(
        sql=compiled.string,
        names=tuple(compiled.positiontup or ()),
        defaults=dict(compiled.params),
        binders=binders,
        decoders=decoders,
    )


Run = Callable[[str, list[Any]], Awaitable[Sequence[Any]]]


class Reader:
    """One driver connection, borrowed for the reads of one request."""

    def __init__(self, run: Run, dialect: Dialect, cache: dict[Hashable, CompiledQuery]) -> None:
        self._run = run
        self.dialect = dialect
        self._cache = cache

    async def fetch(
        self, key: Hashable, build: Callable[[], ClauseElement], values: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Rows of the statement `build()` makes for `key` (compiled on first use)."""
        return self.compiled(key, build).decode(await self.fetch_raw(key, build, values))

    async def fetch_raw(
        self, key: Hashable, build: Callable[[], ClauseElement], values: Mapping[str, Any]
    ) -> Sequence[Any]:
        """The driver's own rows, for a caller that decodes them itself."""
        query = self.compiled(key, build)
        return await self._run(query.sql, query.parameters(values))

    def compiled(self, key: Hashable, build: Callable[[], ClauseElement]) -> CompiledQuery:
        """The statement for `key`, compiled once per dialect."""
        query = self._cache.get(key)
        if query is None:
            query = self._cache[key] = compile_query(build(), self.dialect)
        return query


# Turns at SQLite's read connections go through an asyncio.Semaphore, first come first served
# (Python 3.11.1 and later). With asyncio.Queue, a request that reads twice (a container, then
# its events) took its second connection before the waiter its release woke could run, and
# that waiter lost its place in line: ContainerEvents.graphql at c=16 had a p99 of 7.6x its
# p50 (bench.graphql) against 1.5x for one read. asyncpg's pool already serves waiters in turn
# (tests/test_reader_turns.py).


class SQLiteReaderPool:
    """A few read-only aiosqlite connections; each runs its statements on its own thread."""

    def __init__(self, path: str, dialect: Dialect, *, size: int, busy_timeout_ms: int) -> None:
        self._path = path
        self._dialect = dialect
        self._cache: dict[Hashable, CompiledQuery] = {}
        self._size = size
        self._busy_timeout_ms = busy_timeout_ms
        self._idle: list[aiosqlite.Connection] = []
        # Turns at the connections, first come first served (see above).
        self._turns = asyncio.Semaphore(size)
        self._all: list[aiosqlite.Connection] = []

    async def open(self) -> None:
        for _ in range(self._size):
            connection = await aiosqlite.connect(self._path)
            await connection.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            await connection.execute("PRAGMA query_only=ON")
            self._all.append(connection)
            self._idle.append(connection)

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[Reader]:
        async with self._turns:
            connection = self._idle.pop()  # a turn always finds one idle
            try:

                async def run(sql: str, parameters: list[Any]) -> Sequence[Any]:
                    return cast(Sequence[Any], await connection.execute_fetchall(sql, parameters))

                yield Reader(run, self._dialect, self._cache)
            finally:
                self._idle.append(connection)

    async def close(self) -> None:
        for connection in self._all:
            await connection.close()
        self._all.clear()


async def _decode_json_with_orjson(connection: asyncpg.Connection) -> None:
    # SQLAlchemy's asyncpg dialect installs the same codec on its own connections.
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name, encoder=_dump_json, decoder=orjson.loads, schema="pg_catalog"
        )


def _dump_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def asyncpg_dsn(url: URL) -> str:
    """The DSN asyncpg takes for a SQLAlchemy PostgreSQL URL (its password kept)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresReaderPool:
    """An asyncpg pool; asyncpg also prepares each statement once per connection."""

    def __init__(self, url: URL, dialect: Dialect, *, size: int) -> None:
        self._dialect = dialect
        self._cache: dict[Hashable, CompiledQuery] = {}
        self._dsn = asyncpg_dsn(url)
        self._size = size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=self._size, init=_decode_json_with_orjson
        )

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[Reader]:
        assert self._pool is not None, "open() the pool first"
        async with self._pool.acquire() as connection:

            async def run(sql: str, parameters: list[Any]) -> Sequence[Any]:
                return await connection.fetch(sql, *parameters)

            yield Reader(run, self._dialect, self._cache)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


_written: dict[tuple[Executable, tuple[str, ...]], CompiledQuery] = {}


# PostgreSQL: the most rows one statement of a write sends. SQLAlchemy converts all of a
# statement's parameters (JSON, times) on the event loop before its first row goes out: one
# statement for a batch of 10,000 events with 3 KiB details held the loop for 180 ms
# (bench.stalls); a statement per 1,000 rows lets other requests run between them.
WRITE_CHUNK = 1_000


def chunks(rows: Sequence[Any], size: int | None = None) -> Iterator[Sequence[Any]]:
    """`rows` in slices of at most `size` (WRITE_CHUNK by default), in order."""
    size = size or WRITE_CHUNK
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


async def execute_many(
    session: AsyncSession,
    statement: Executable,
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: tuple[str, ...] | None = None,
    last_rowid: bool = False,
) -> int | None:
    """Run an INSERT (or upsert) once per row, in the session's transaction: of each row's
    `columns`, by default every key of the first row (all rows have them). On SQLite the
    statement (which must be built once, not per call) is compiled once and run on the
    driver's connection; asked for `last_rowid`, the answer is the rowid of the last row
    inserted. On PostgreSQL it runs through the session, WRITE_CHUNK rows a statement, and
    answers None.
    """
    bind = session.get_bind()
    keys = tuple(rows[0]) if columns is None and rows else columns
    if bind.dialect.name != "sqlite" or not rows:
        for chunk in chunks(rows):
            if columns is not None:
                chunk = [{column: row[column] for column in columns} for row in chunk]
            await session.execute(statement, list(chunk))
        return None
    assert keys is not None
    compiled = _written.get((statement, keys))
    if compiled is None:
        compiled = _written[statement, keys] = compile_query(
            cast(ClauseElement, statement), bind.dialect, keys
        )
    connection = await (await session.connection()).get_raw_connection()
    driver = cast(aiosqlite.Connection, connection.driver_connection)
    try:
        # A generator: the rows are converted (JSON, times) as aiosqlite's thread consumes
        # them, not in one go on the event loop (135 ms for 10,000 rows with 3 KiB details).
        await driver.executemany(compiled.sql, compiled.iter_parameters(rows))
        if not last_rowid:
            return None
        async with driver.execute("SELECT last_insert_rowid()") as cursor:
            found = await cursor.fetchone()
    except sqlite3.Error as error:
        # The errors SQLAlchemy would have raised (IntegrityError, OperationalError, ...).
        raise DBAPIError.instance(compiled.sql, None, error, sqlite3.Error) from error
    return None if found is None else int(found[0])
