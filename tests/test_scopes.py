"""Scoped API keys: read, write and admin, on every REST route and GraphQL operation.

A dashboard's read-only key cannot write, an ingest agent's write-only key cannot read; each
answers 403 (FORBIDDEN on GraphQL) with nothing stored. A missing key answers 401 and another
org's key 404, whatever its scopes. Every event records the id of the key that wrote it.
"""

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from schema import build_schema
from schema.subscription import LiveContext
from storage.broker import Broker
from storage.database import Database
from storage.events import Page, list_events
from storage.keys import DEFAULT_SCOPES, Scope
from tests.factories import auth, count_events, key_id_of, make_events, make_key, make_org
from tests.graphql_client import only_error, post_graphql

READ, WRITE, ADMIN = frozenset({Scope.READ}), frozenset({Scope.WRITE}), frozenset({Scope.ADMIN})
EVENT = {"event_type": "ACCESS", "status": "SUCCESS", "timestamp": "2023-11-18T12:00:00Z"}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    needs: Scope
    body: Any = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ROUTES = [
    Route("GET", "/orgs/acme/events", Scope.READ),
    *(
        Route("GET", f"/orgs/acme/container_events/by_{name}", Scope.READ)
        for name in ("access", "block", "create", "expire", "fail")
    ),
    Route("GET", "/orgs/acme/containers/c1/events", Scope.READ),
    Route(
        "GET",
        "/orgs/acme/events/counts?since=2023-11-18T00:00:00Z&until=2023-11-19T00:00:00Z&by=type",
        Scope.READ,
    ),
    Route("POST", "/orgs/acme/containers/c1/events", Scope.WRITE, EVENT),
    Route("POST", "/orgs/acme/events", Scope.WRITE, [{**EVENT, "container_id": "c2"}]),
]
ROUTE_IDS = [str(route) for route in ROUTES]


async def call(client: httpx.AsyncClient, route: Route, key: str | None) -> httpx.Response:
    headers = {} if key is None else auth(key)
    return await client.request(route.method, route.path, json=route.body, headers=headers)


@pytest.fixture
async def acme(db: Database) -> str:
    """The org, with one event in container c1 so that every read has something to find."""
    secret = await make_org(db, "acme")
    await make_events(db, "acme", [("c1", {})])
    return secret


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize(
    "scopes", [READ, WRITE, ADMIN, DEFAULT_SCOPES], ids=["read", "write", "admin", "read+write"]
)
async def test_each_route_answers_by_the_keys_scope(
    client: httpx.AsyncClient, db: Database, acme: str, route: Route, scopes: frozenset[Scope]
):
    key = await make_key(db, "acme", scopes)
    stored_before = await count_events(db)

    answer = await call(client, route, key)

    allowed = route.needs in scopes or Scope.ADMIN in scopes
    if allowed:
        assert answer.status_code == 200, answer.text
        return
    assert answer.status_code == 403, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == 403
    assert f"Use a key with the {route.needs.value} scope" in problem["detail"]
    assert await count_events(db) == stored_before


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_without_a_key_every_route_answers_401_and_another_orgs_key_404(
    client: httpx.AsyncClient, db: Database, acme: str, route: Route
):
    other = await make_org(db, "other")  # read and write, but for its own org only
    stored_before = await count_events(db)

    missing, foreign = await call(client, route, None), await call(client, route, other)

    assert missing.status_code == 401, missing.text
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert foreign.status_code == 404, foreign.text
    assert foreign.json()["detail"] == "Organization 'acme' not found."
    assert await count_events(db) == stored_before


async def test_an_event_records_the_id_of_the_key_that_wrote_it_never_the_secret(
    client: httpx.AsyncClient, db: Database, acme: str
):
    agent = await make_key(db, "acme", WRITE)
    dashboard = await make_key(db, "acme", READ)

    single = await client.post("/orgs/acme/containers/c9/events", json=EVENT, headers=auth(agent))
    batch = await client.post(
        "/orgs/acme/events", json=[{**EVENT, "container_id": "c9"}], headers=auth(agent)
    )
    listed = await client.get("/orgs/acme/containers/c9/events", headers=auth(dashboard))

    agent_id = await key_id_of(db, agent)
    assert single.json()["event"]["key_id"] == agent_id
    assert [event["key_id"] for event in listed.json()["events"]] == [agent_id, agent_id]
    assert [event["id"] for event in listed.json()["events"]][1] == single.json()["event"]["id"]
    assert batch.json()["ids"] == [listed.json()["events"][0]["id"]]
    assert agent not in listed.text


# GraphQL: the same rules, answered as FORBIDDEN.

QUERY = '{ org(id: "acme") { events(first: 5) { nodes { id keyId } } } }'
LOG_ONE = """
mutation { logContainerEvent(orgId: "acme", containerId: "c5",
  event: {eventType: ACCESS, status: SUCCESS, timestamp: "2023-11-18T12:00:00Z"})
  { event { id keyId } } }
"""
LOG_MANY = """
mutation { logContainerEvents(orgId: "acme",
  events: [{containerId: "c5", eventType: ACCESS, status: SUCCESS,
            timestamp: "2023-11-18T12:00:00Z"}]) { ids } }
"""


@pytest.mark.parametrize(
    ("document", "needs"),
    [(QUERY, Scope.READ), (LOG_ONE, Scope.WRITE), (LOG_MANY, Scope.WRITE)],
    ids=["query", "logContainerEvent", "logContainerEvents"],
)
@pytest.mark.parametrize(
    "scopes", [READ, WRITE, ADMIN, DEFAULT_SCOPES], ids=["read", "write", "admin", "read+write"]
)
async def test_each_graphql_operation_answers_by_the_keys_scope(
    client: httpx.AsyncClient,
    db: Database,
    acme: str,
    document: str,
    needs: Scope,
    scopes: frozenset[Scope],
):
    key = await make_key(db, "acme", scopes)
    stored_before = await count_events(db)

    answer = await post_graphql(client, key, document)

    if needs in scopes or Scope.ADMIN in scopes:
        assert "errors" not in answer, answer
        if needs is Scope.WRITE:
            assert await count_events(db) == stored_before + 1
            async with db.reader() as reader:
                [newest] = (await list_events(reader, org_id="acme", page=Page(limit=1))).rows
            assert newest["key_id"] == await key_id_of(db, key)
        if document is LOG_ONE:
            assert answer["data"]["logContainerEvent"]["event"]["keyId"] == newest["key_id"]
        return
    error = only_error(answer)
    assert error["extensions"]["code"] == "FORBIDDEN"
    assert f"Use a key with the {needs.value} scope" in error["message"]
    assert await count_events(db) == stored_before


async def test_a_write_only_key_cannot_subscribe(db: Database, acme: str):
    schema = build_schema()
    context = LiveContext(db=db, org_id="acme", broker=Broker(), scopes=WRITE)
    results = await schema.subscribe(
        'subscription { containerEvents(orgId: "acme") { id } }', context_value=context
    )

    if isinstance(results, AsyncGenerator):
        async with aclosing(results):
            first = await anext(results)
    else:
        first = results
    assert first.errors is not None
    assert [error.extensions["code"] for error in first.errors] == ["FORBIDDEN"]
