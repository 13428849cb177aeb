"""Introspection and the GraphiQL page, each on by default and off by configuration."""

from collections.abc import AsyncIterator

import httpx
import pytest
from graphql import get_introspection_query

from gateway.app import create_app
from gateway.config import Settings
from storage.database import Database
from tests.factories import auth
from tests.graphql_client import only_error, post_graphql


@pytest.fixture
async def locked(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a gateway with introspection and GraphiQL off, as the variables set them."""
    settings = Settings.from_env(database_url=db.url, key_cache_seconds=0)
    assert settings.graphql_introspection and settings.graphiql
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EVENTS_GATEWAY_GRAPHQL_INTROSPECTION", "0")
        env.setenv("EVENTS_GATEWAY_GRAPHIQL", "0")
        settings = Settings.from_env(database_url=db.url, key_cache_seconds=0)
    app = create_app(settings, db=db)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.mark.parametrize(
    "query",
    [
        "{ __schema { queryType { name } } }",
        '{ __type(name: "Event") { fields { name } } }',
        get_introspection_query(),
        '{ org(id: "acme") { id } __schema { types { name } } }',
    ],
    ids=["__schema", "__type", "full introspection", "beside a real field"],
)
async def test_introspection_off_refuses_schema_and_type_with_a_code(locked, acme_key, query):
    answer = await post_graphql(locked, acme_key, query)

    assert answer.get("data") is None
    codes = {error["extensions"]["code"] for error in answer["errors"]}
    assert codes == {"INTROSPECTION_DISABLED"}


async def test_introspection_off_still_answers_typename_and_queries(locked, acme_key):
    answer = await post_graphql(locked, acme_key, '{ __typename org(id: "acme") { id } }')

    assert answer == {"data": {"__typename": "Query", "org": {"id": "acme"}}}


async def test_introspection_is_on_by_default(client, acme_key):
    answer = await post_graphql(client, acme_key, '{ __type(name: "Event") { name } }')

    assert answer == {"data": {"__type": {"name": "Event"}}}


async def test_graphiql_off_serves_no_page_to_a_browser(locked, acme_key):
    anonymous = await locked.get("/graphql", headers={"Accept": "text/html"})
    keyed = await locked.get("/graphql", headers={**auth(acme_key), "Accept": "text/html"})

    assert anonymous.status_code == 401
    assert only_error(anonymous.json())["extensions"]["code"] == "UNAUTHENTICATED"
    assert keyed.status_code == 404
    assert only_error(keyed.json())["extensions"]["code"] == "NOT_FOUND"


async def test_graphiql_off_leaves_queries_over_get_working(locked, acme_key):
    headers = {**auth(acme_key), "Accept": "text/html"}

    response = await locked.get("/graphql", params={"query": "{ __typename }"}, headers=headers)

    assert response.json() == {"data": {"__typename": "Query"}}


async def test_graphiql_is_served_by_default(client):
    response = await client.get("/graphql", headers={"Accept": "text/html"})

    assert response.status_code == 200
    assert "graphiql" in response.text.lower()
