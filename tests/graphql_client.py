"""Calling /graphql from tests the way a frontend does: a POST with the API key."""

from typing import Any

import httpx

from tests.factories import auth

EVENT_FIELDS = """
  id eventType status timestamp receivedAt actor details container { id }
"""


async def post_graphql(
    client: httpx.AsyncClient, key: str, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON answer of one operation, errors included; fails on a non-200 status."""
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers=auth(key)
    )
    assert response.status_code == 200, response.text
    return response.json()


async def graphql_data(
    client: httpx.AsyncClient, key: str, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The `data` of an operation that must succeed without errors."""
    answer = await post_graphql(client, key, query, variables)
    assert "errors" not in answer, answer["errors"]
    return answer["data"]


def only_error(answer: dict[str, Any]) -> dict[str, Any]:
    """The single error of a failed operation."""
    assert len(answer.get("errors", [])) == 1, answer
    return answer["errors"][0]


def node_ids(connection: dict[str, Any]) -> list[int]:
    """Event ids of a connection's page, in page order, as REST shows them."""
    return [int(edge["node"]["id"]) for edge in connection["edges"]]
