"""Hostile input to /graphql: every request gets a coded JSON answer, never a 5xx or a hang."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC

import graphql
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import strategies as gql_st

from bench.hostile_graphql import cases
from schema import build_schema
from tests.factories import auth, count_events

CASES = {case.name: case for case in cases("acme")}
SDL = build_schema().as_str()
# A hang fails the test; a slow machine alone does not come near this.
TIMEOUT_SECONDS = 10


def assert_coded_answer(response: httpx.Response) -> dict:
    """No 5xx, a JSON body, a code on every error, and a rejection carries errors."""
    assert response.status_code < 500, response.text[:500]
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    body = response.json()
    assert isinstance(body, dict), body
    if response.status_code >= 400:
        assert body.get("errors"), body
    for error in body.get("errors") or []:
        assert error["extensions"]["code"], error
    return body


async def send(client: httpx.AsyncClient, key: str, name: str) -> httpx.Response:
    case = CASES[name]
    request = client.request(
        case.method,
        case.path,
        content=case.body or None,
        headers={**case.headers, **auth(key)},
    )
    return await asyncio.wait_for(request, TIMEOUT_SECONDS)


@pytest.mark.parametrize("name", list(CASES))
async def test_a_hostile_request_gets_a_coded_answer(client, db, acme_key, name):
    response = await send(client, acme_key, name)

    assert_coded_answer(response)
    assert await count_events(db) == 0


@pytest.mark.parametrize(
    "name",
    [
        "depth: 200 levels of real fields",
        "depth: 100,000 nested braces",
        "aliases: 31 of org",
        "tokens: 80,000 fields",
        "fragments: a cycle A -> B -> A",
        "fragments: an unknown fragment spread",
        "bytes: invalid UTF-8 in the JSON body",
        "json: a number",
        "json: query is a number",
        "json: variables is a list",
        "operations: 500 with no operationName",
        "operations: three named, no operationName",
        "operations: an unknown operationName",
        "directives: 500 @include on one field",
        "content type: text/plain",
        "get: a mutation",
    ],
)
async def test_a_hostile_request_is_refused_without_data(client, acme_key, name):
    body = assert_coded_answer(await send(client, acme_key, name))

    assert body["errors"]
    assert body.get("data") is None


async def test_a_body_over_the_limit_is_a_coded_413(client, acme_key):
    response = await send(client, acme_key, "body: 1 byte over the limit (variable)")

    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_a_streamed_body_over_the_limit_is_a_coded_413(client, acme_key):
    body = CASES["body: 1 byte over the limit (variable)"].body

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    headers = {**auth(acme_key), "Content-Type": "application/json"}
    response = await client.post("/graphql", content=chunks(), headers=headers)

    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_a_rest_body_over_the_limit_is_still_a_problem(client, acme_key):
    body = CASES["body: 1 byte over the limit (variable)"].body

    response = await client.post(
        "/orgs/acme/containers/c1/events", content=body, headers=auth(acme_key)
    )

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_body_just_under_the_limit_is_executed(client, acme_key):
    response = await send(client, acme_key, "body: 1 KiB under the limit (variable)")

    # The padded org id names no org, which only execution can tell.
    assert response.status_code == 200
    assert response.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_a_batch_is_refused_with_a_code_saying_so(client, acme_key):
    response = await send(client, acme_key, "batch: two operations in a JSON array")

    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BATCHING_NOT_SUPPORTED"


async def test_a_cycle_of_fragments_is_a_validation_error(client, acme_key):
    response = await send(client, acme_key, "fragments: a cycle A -> B -> A")

    codes = {error["extensions"]["code"] for error in response.json()["errors"]}
    assert codes == {"GRAPHQL_VALIDATION_FAILED"}


def _string(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[graphql.StringValueNode]:
    return strategy.map(lambda value: graphql.StringValueNode(value=value))


# Generated values: mostly the caller's own org (so the document is executed, not just refused
# as NOT_FOUND), real times, small JSON objects; and arbitrary text now and then.
SCALARS = {
    "ID": _string(st.sampled_from(["acme", "vault-1"]) | st.text(max_size=20)),
    "DateTime": _string(
        st.datetimes(timezones=st.just(UTC)).map(lambda moment: moment.isoformat())
        | st.text(max_size=30)
    ),
    "JSON": st.just(graphql.ObjectValueNode(fields=())),
}


@settings(
    max_examples=100,
    deadline=None,
    database=None,  # nothing written into the tree; failures print their example
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    document=gql_st.queries(SDL, custom_scalars=SCALARS)
    | gql_st.mutations(SDL, custom_scalars=SCALARS)
)
async def test_generated_documents_get_data_or_coded_errors(client, acme_key, document):
    request = client.post("/graphql", json={"query": document}, headers=auth(acme_key))
    response = await asyncio.wait_for(request, TIMEOUT_SECONDS)

    body = assert_coded_answer(response)
    assert response.status_code in (200, 400), response.text[:500]
    codes = {error["extensions"]["code"] for error in body.get("errors") or []}
    assert "INTERNAL_SERVER_ERROR" not in codes, body
