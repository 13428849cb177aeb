"""/graphql over HTTP: API keys, cross-org isolation, GraphiQL and GET requests."""

import pytest

from storage.keys import list_keys, revoke_key
from tests.factories import auth, count_events, make_events
from tests.graphql_client import graphql_data, only_error, post_graphql

ORG = '{ org(id: "acme") { id name } }'


def assert_unauthenticated(response) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    error = only_error(response.json())
    assert error["extensions"] == {"code": "UNAUTHENTICATED"}


async def test_a_valid_key_sees_its_org(client, acme_key):
    assert await graphql_data(client, acme_key, ORG) == {"org": {"id": "acme", "name": "acme"}}


async def test_the_key_may_come_as_x_api_key(client, acme_key):
    response = await client.post("/graphql", json={"query": ORG}, headers={"X-API-Key": acme_key})

    assert response.json() == {"data": {"org": {"id": "acme", "name": "acme"}}}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer egw_not-a-key"},
        {"X-API-Key": "egw_not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["missing", "unknown-bearer", "unknown-x-api-key", "wrong-scheme"],
)
async def test_a_missing_or_unknown_key_is_401(client, acme_key, headers):
    response = await client.post("/graphql", json={"query": ORG}, headers=headers)

    assert_unauthenticated(response)


async def test_a_revoked_key_is_401(client, db, acme_key):
    async with db.session() as session:
        [key] = await list_keys(session, org_id="acme")
        assert await revoke_key(session, key_id=key.id)

    response = await client.post("/graphql", json={"query": ORG}, headers=auth(acme_key))

    assert_unauthenticated(response)


async def test_the_401_never_echoes_the_key(client):
    response = await client.post("/graphql", json={"query": ORG}, headers=auth("egw_secret-value"))

    assert "secret-value" not in response.text


async def test_another_org_is_not_found_exactly_as_a_missing_one(client, db, acme_key, other_key):
    await make_events(db, "other", [("theirs", {})])
    query = "query Org($id: ID!) { org(id: $id) { id events { edges { cursor } } } }"

    foreign = await post_graphql(client, acme_key, query, {"id": "other"})
    missing = await post_graphql(client, acme_key, query, {"id": "nope"})

    assert foreign["data"] == missing["data"] == {"org": None}
    foreign_error, missing_error = only_error(foreign), only_error(missing)
    assert foreign_error["extensions"] == missing_error["extensions"] == {"code": "NOT_FOUND"}
    assert foreign_error["message"].replace("other", "nope") == missing_error["message"]
    assert foreign_error["path"] == missing_error["path"] == ["org"]


async def test_graphiql_page_loads_in_a_browser_without_a_key(client):
    response = await client.get("/graphql", headers={"Accept": "text/html"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "graphiql" in response.text.lower()


async def test_a_query_over_get_needs_a_key(client, acme_key):
    anonymous = await client.get("/graphql", params={"query": ORG})
    keyed = await client.get("/graphql", params={"query": ORG}, headers=auth(acme_key))

    assert_unauthenticated(anonymous)
    assert keyed.status_code == 200
    assert keyed.json() == {"data": {"org": {"id": "acme", "name": "acme"}}}


async def test_a_query_over_get_from_a_browser_still_needs_a_key(client, acme_key):
    response = await client.get("/graphql", params={"query": ORG}, headers={"Accept": "text/html"})

    assert_unauthenticated(response)


async def test_a_mutation_over_get_is_refused(client, db, acme_key):
    query = 'mutation { logContainerEvent(orgId: "acme", containerId: "c1", '
    query += "event: {eventType: ACCESS}) { message } }"

    response = await client.get("/graphql", params={"query": query}, headers=auth(acme_key))

    assert response.status_code in (400, 405)
    assert only_error(response.json())["extensions"]["code"]
    assert await count_events(db) == 0
