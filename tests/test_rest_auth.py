"""REST shim access: API keys on every route, and each org sees only its own resources."""

from typing import Any

import httpx
import pytest

from storage.database import Database
from storage.keys import list_keys, revoke_key
from tests.factories import auth, count_events, make_events
from tests.rest_assertions import assert_problem

NEW_EVENT = {"event_type": "ACCESS", "timestamp": "2023-11-18T12:00:00Z"}

# (method, path template, JSON body) for every route of the shim; {org} is filled in per test.
ROUTES: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "org_events": ("GET", "/orgs/{org}/events", None),
    "by_access": ("GET", "/orgs/{org}/container_events/by_access", None),
    "by_block": ("GET", "/orgs/{org}/container_events/by_block", None),
    "by_create": ("GET", "/orgs/{org}/container_events/by_create", None),
    "by_expire": ("GET", "/orgs/{org}/container_events/by_expire", None),
    "by_fail": ("GET", "/orgs/{org}/container_events/by_fail", None),
    "container_events": ("GET", "/orgs/{org}/containers/c1/events", None),
    "post_event": ("POST", "/orgs/{org}/containers/c1/events", NEW_EVENT),
}
every_route = pytest.mark.parametrize(("method", "path", "body"), ROUTES.values(), ids=ROUTES)


async def call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
    org: str = "acme",
) -> httpx.Response:
    return await client.request(method, path.format(org=org), json=body, headers=headers)


async def revoked_acme_key(db: Database, secret: str) -> str:
    async with db.session() as session:
        [key] = await list_keys(session, org_id="acme")
        assert await revoke_key(session, key_id=key.id)
    return secret


BAD_CREDENTIALS = {
    "missing": {},
    "unknown_bearer": {"Authorization": "Bearer egw_not-a-real-key"},
    "unknown_x_api_key": {"X-API-Key": "egw_not-a-real-key"},
    "basic_scheme": {"Authorization": "Basic YWNtZTpzZWNyZXQ="},
    "bearer_without_key": {"Authorization": "Bearer "},
    "empty_x_api_key": {"X-API-Key": ""},
}


@every_route
@pytest.mark.parametrize("headers", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS)
async def test_a_request_without_a_valid_key_answers_401_with_a_challenge(
    client, db, acme_key, method, path, body, headers
):
    await make_events(db, "acme", [("c1", {})])

    answer = await call(client, method, path, body, headers)

    problem = assert_problem(answer, 401)
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert acme_key not in answer.text and "egw_not-a-real-key" not in problem["detail"]
    assert await count_events(db) == 1


@every_route
async def test_a_revoked_key_answers_401_on_every_route(client, db, acme_key, method, path, body):
    await make_events(db, "acme", [("c1", {})])
    assert (await call(client, method, path, body, auth(acme_key))).status_code == 200
    key = await revoked_acme_key(db, acme_key)
    stored = await count_events(db)

    answer = await call(client, method, path, body, auth(key))

    assert_problem(answer, 401)
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert await count_events(db) == stored


@every_route
@pytest.mark.parametrize(
    "as_headers",
    [lambda key: {"Authorization": f"Bearer {key}"}, lambda key: {"X-API-Key": key}],
    ids=["authorization_bearer", "x_api_key"],
)
async def test_either_key_header_is_accepted_on_every_route(
    client, db, acme_key, method, path, body, as_headers
):
    await make_events(db, "acme", [("c1", {})])

    answer = await call(client, method, path, body, as_headers(acme_key))

    assert answer.status_code == 200, answer.text


async def test_the_bearer_scheme_is_matched_without_regard_to_case(client, acme_key):
    answer = await client.get("/orgs/acme/events", headers={"Authorization": f"bearer {acme_key}"})

    assert answer.status_code == 200, answer.text


@every_route
async def test_another_orgs_key_gets_404_exactly_as_for_a_nonexistent_org(
    client, db, acme_key, other_key, method, path, body
):
    await make_events(db, "acme", [("c1", {})])

    foreign = await call(client, method, path, body, auth(other_key), org="acme")
    # "ghst" has acme's length, so the two answers may differ only in the id they echo.
    absent = await call(client, method, path, body, auth(other_key), org="ghst")

    assert_problem(foreign, 404)
    assert foreign.text == absent.text.replace("ghst", "acme")
    assert foreign.headers["content-type"] == absent.headers["content-type"]
    assert await count_events(db) == 1


@pytest.mark.parametrize(
    "body",
    [NEW_EVENT, {"event_type": "NOT-A-TYPE"}, {"unknown": 1}],
    ids=["valid", "bad_enum", "unknown_field"],
)
async def test_posting_into_another_org_stores_nothing_and_reveals_nothing(
    client, db, acme_key, other_key, body
):
    answer = await client.post(
        "/orgs/acme/containers/c1/events", json=body, headers=auth(other_key)
    )

    assert_problem(answer, 404)
    assert await count_events(db) == 0


async def test_a_key_lists_only_its_own_orgs_events_in_a_shared_container_name(
    client, db, acme_key, other_key
):
    [mine] = await make_events(db, "acme", [("c1", {})])
    await make_events(db, "other", [("c1", {})])

    answer = await client.get("/orgs/acme/containers/c1/events", headers=auth(acme_key))

    assert [event["id"] for event in answer.json()["events"]] == [mine["id"]]
