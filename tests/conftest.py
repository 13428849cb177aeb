"""Fixtures: a clean database per test (SQLite, and PostgreSQL when reachable), app, client."""

import os
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.config import Settings
from storage.database import Database
from tests.factories import make_org

POSTGRES_URL_VARIABLE = "EVENTS_GATEWAY_TEST_POSTGRES_URL"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Every storage-backed test runs on SQLite and again on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'events.db'}"
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"PostgreSQL not configured: set {POSTGRES_URL_VARIABLE} (.ci/run does)")
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        if database.dialect == "postgresql":
            await database.drop_schema()
        await database.create_schema()
    except OSError as error:
        await database.dispose()
        pytest.skip(f"PostgreSQL at {POSTGRES_URL_VARIABLE} is not reachable: {error}")
    yield database
    await database.dispose()


@pytest.fixture
def app(db: Database) -> Starlette:
    # No key cache: tests revoke keys and expect the very next request to be refused.
    return create_app(Settings(database_url=db.url, key_cache_seconds=0), db=db)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def acme_key(db: Database) -> str:
    """The API key of org `acme`."""
    return await make_org(db, "acme")


@pytest.fixture
async def other_key(db: Database) -> str:
    """The API key of org `other`, which must never see acme's data."""
    return await make_org(db, "other")
