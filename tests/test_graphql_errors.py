"""GraphQL errors: every one carries extensions.code; faults are masked; abuse is refused."""

import logging

import pytest

import schema.compiled
import schema.types
from tests.factories import auth, make_events
from tests.graphql_client import only_error, post_graphql


async def test_a_syntax_error_has_a_code(client, acme_key):
    answer = await post_graphql(client, acme_key, '{ org(id: "acme" { id } }')

    assert only_error(answer)["extensions"] == {"code": "GRAPHQL_PARSE_FAILED"}


async def test_an_unknown_field_has_a_code(client, acme_key):
    answer = await post_graphql(client, acme_key, '{ org(id: "acme") { id colour } }')

    assert "colour" in only_error(answer)["message"]
    assert only_error(answer)["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}


async def test_a_missing_variable_is_bad_user_input(client, acme_key):
    answer = await post_graphql(client, acme_key, "query Org($id: ID!) { org(id: $id) { id } }")

    assert only_error(answer)["extensions"] == {"code": "BAD_USER_INPUT"}


async def test_a_request_without_a_query_is_a_coded_400(client, acme_key):
    response = await client.post("/graphql", json={"variables": {}}, headers=auth(acme_key))

    assert response.status_code == 400
    assert only_error(response.json())["extensions"]["code"]


async def test_a_body_that_is_not_json_is_a_coded_400(client, acme_key):
    response = await client.post(
        "/graphql",
        content=b"{not json",
        headers={**auth(acme_key), "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert only_error(response.json())["extensions"]["code"]


async def test_a_resolver_fault_is_masked_and_logged(client, db, acme_key, monkeypatch, caplog):
    await make_events(db, "acme", [("c1", {})])

    async def broken_list_events(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("connection to db-internal-7:5432 refused")

    monkeypatch.setattr(schema.types, "list_events", broken_list_events)
    monkeypatch.setattr(schema.compiled, "list_event_rows", broken_list_events)  # and its plans'

    with caplog.at_level(logging.ERROR):
        answer = await post_graphql(
            client, acme_key, '{ org(id: "acme") { id events { edges { cursor } } } }'
        )

    error = only_error(answer)
    assert error["message"] == "Unexpected error."
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR"}
    assert error["path"] == ["org", "events"]
    assert answer["data"] == {"org": None}
    body = str(answer)
    assert "db-internal-7" not in body
    assert "Traceback" not in body
    assert "db-internal-7" in caplog.text  # the operator still sees what went wrong


async def test_a_clients_mistake_is_not_logged_as_a_fault(client, acme_key, caplog):
    with caplog.at_level(logging.ERROR):
        await post_graphql(client, acme_key, '{ org(id: "nope") { id } }')

    assert caplog.records == []


def nested_events(depth: int) -> str:
    """Events within containers within events, `depth` times over: 4 + 4 * depth levels."""
    selection = "id"
    for _ in range(depth):
        selection = f"container {{ events {{ edges {{ node {{ {selection} }} }} }} }}"
    return f'{{ org(id: "acme") {{ events {{ edges {{ node {{ {selection} }} }} }} }} }}'


def aliased(count: int) -> str:
    return "{ " + " ".join(f"a{n}: __typename" for n in range(count)) + " }"


def tokens(count: int) -> str:
    return "{ " + "__typename " * (count - 2) + "}"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        (nested_events(depth=2), "GRAPHQL_VALIDATION_FAILED"),  # depth 12 > 10
        (aliased(31), "GRAPHQL_VALIDATION_FAILED"),  # > 30 aliases
        (tokens(2001), "GRAPHQL_PARSE_FAILED"),  # > 2000 tokens
    ],
    ids=["too-deep", "too-many-aliases", "too-many-tokens"],
)
async def test_abuse_limits_are_on_by_default(client, db, acme_key, query, code):
    answer = await post_graphql(client, acme_key, query)

    assert answer["data"] is None
    assert only_error(answer)["extensions"] == {"code": code}


async def test_documents_within_the_limits_run(client, db, acme_key):
    await make_events(db, "acme", [("c1", {})])

    for query in (nested_events(depth=1), aliased(30)):
        answer = await post_graphql(client, acme_key, query)
        assert "errors" not in answer, answer
