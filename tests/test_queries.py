"""Every operation in queries/ runs over HTTP and answers what a frontend expects.

The files are discovered, so a new one is checked against the schema and executed at once;
it also needs an entry in EXPECTATIONS saying what its answer must be. A subscription runs
through the schema itself (the HTTP client has no WebSocket; tests/test_subscriptions.py
speaks the protocol to a real server).
"""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import graphql
import httpx
import pytest

from schema import build_schema
from schema.subscription import LiveContext
from storage.broker import Broker
from storage.cursors import encode_event_cursor
from storage.database import Database
from storage.domain import EventFilter
from storage.events import EventRecord
from tests.factories import BASE_TIME, auth, count_events, make_events
from tests.graphql_client import graphql_data, node_ids

QUERIES = sorted((Path(__file__).parent.parent / "queries").glob("*.graphql"))

# Small pages, so every list operation is walked over several of them.
PAGE_SIZE = 2

# A value for each required variable the operations declare; optional ones are left out.
VARIABLES: dict[str, Any] = {
    "orgId": "acme",
    "containerId": "c1",
    "since": "2023-11-18T12:00:00Z",
    "until": "2023-11-18T13:00:00Z",
    "event": {
        "eventType": "ACCESS",
        "status": "FAILURE",
        "timestamp": "2023-11-18T13:30:00Z",
        "actor": "alice",
        "details": {"ip": "10.0.0.1"},
    },
    "events": [
        {"containerId": "c4", "eventType": "CREATE", "timestamp": "2023-11-18T13:40:00Z"},
        {"containerId": "c1", "eventType": "ACCESS", "status": "FAILURE", "actor": "bob"},
    ],
}

# Every type and status, spread over three containers: each filter selects some, not all.
SCENARIO = [
    ("c1", {"event_type": "ACCESS", "actor": "alice"}),
    ("c2", {"event_type": "ACCESS", "status": "FAILURE", "actor": "mallory"}),
    ("c1", {"event_type": "BLOCK"}),
    ("c3", {"event_type": "CREATE", "details": {"size": 10}}),
    ("c1", {"event_type": "EXPIRE"}),
    ("c2", {"event_type": "UPDATE", "status": "FAILURE"}),
    ("c3", {"event_type": "DELETE"}),
    ("c1", {"event_type": "ACCESS"}),
    ("c2", {"event_type": "BLOCK", "status": "FAILURE"}),
    ("c3", {"event_type": "CREATE"}),
    ("c1", {"event_type": "EXPIRE", "status": "FAILURE"}),
]


def operation_name(path: Path) -> str:
    return path.stem


def declared_variables(document: graphql.DocumentNode) -> dict[str, bool]:
    """Each variable of the document's operation, and whether it must be given."""
    [operation] = document.definitions
    assert isinstance(operation, graphql.OperationDefinitionNode)
    return {
        definition.variable.name.value: isinstance(definition.type, graphql.NonNullTypeNode)
        and definition.default_value is None
        for definition in operation.variable_definitions
    }


@dataclass
class Operation:
    """One queries/ file, run over HTTP with the acme key, as a frontend runs it."""

    client: httpx.AsyncClient
    db: Database
    key: str
    text: str

    async def run(self, **overrides: Any) -> dict[str, Any]:
        declared = declared_variables(graphql.parse(self.text))
        variables = {name: VARIABLES[name] for name, required in declared.items() if required}
        if "first" in declared:
            variables["first"] = PAGE_SIZE
        variables.update(overrides)
        return await graphql_data(self.client, self.key, self.text, variables)

    async def stream(self, count: int, **overrides: Any) -> list[dict[str, Any]]:
        """A subscription's first `count` results; polling stands in for commit notices."""
        variables = {"orgId": VARIABLES["orgId"], **overrides}
        context = LiveContext(db=self.db, org_id="acme", broker=Broker(poll_seconds=0.05))
        results = await build_schema().subscribe(
            self.text, variable_values=variables, context_value=context
        )
        assert isinstance(results, AsyncGenerator)
        data: list[dict[str, Any]] = []
        async with contextlib.aclosing(results):
            async for result in results:
                assert not result.errors, result.errors
                data.append(result.data)
                if len(data) == count:
                    break
        return data

    async def rest(self, path: str, **params: Any) -> dict[str, Any]:
        response = await self.client.get(path, params=params, headers=auth(self.key))
        assert response.status_code == 200, response.text
        return response.json()


Expectation = Callable[[Operation, list[EventRecord]], Awaitable[None]]


async def walk_events(
    operation: Operation, connection_of: Callable[[dict[str, Any]], dict[str, Any]], **variables
) -> list[dict[str, Any]]:
    """Every node, following pageInfo.endCursor while hasNextPage, as a "load more" does."""
    nodes: list[dict[str, Any]] = []
    after = None
    while True:
        connection = connection_of(await operation.run(after=after, **variables))
        nodes += [edge["node"] for edge in connection["edges"]]
        assert len(connection["edges"]) <= variables.get("first", PAGE_SIZE)
        if not connection["pageInfo"]["hasNextPage"]:
            return nodes
        after = connection["pageInfo"]["endCursor"]


def org_events(data: dict[str, Any]) -> dict[str, Any]:
    return data["org"]["events"]


def container_events(data: dict[str, Any]) -> dict[str, Any]:
    return data["org"]["container"]["events"]


def filtered_list(event_filter: EventFilter) -> Expectation:
    async def expect(operation: Operation, rows: list[EventRecord]) -> None:
        nodes = await walk_events(operation, org_events)
        rest = await operation.rest(f"/orgs/acme/container_events/by_{event_filter.value.lower()}")
        assert [int(node["id"]) for node in nodes] == [item["id"] for item in rest["events"]]
        assert nodes, "the scenario has events for every filter"
        for node, item in zip(nodes, rest["events"], strict=True):
            assert node["eventType"] == item["event_type"]
            assert node["status"] == item["status"]
            assert node["container"]["id"] == item["container_id"]
            assert node["actor"] == item["actor"]
            assert node["details"] == item["details"]
            assert datetime.fromisoformat(node["timestamp"]) == datetime.fromisoformat(
                item["timestamp"]
            )

    return expect


async def expect_org_events(operation: Operation, rows: list[EventRecord]) -> None:
    everything = await walk_events(operation, org_events)
    assert [int(node["id"]) for node in everything] == [row["id"] for row in reversed(rows)]

    since, until = "2023-11-18T12:01:00Z", "2023-11-18T12:09:00Z"
    narrowed = await walk_events(
        operation,
        org_events,
        filter="ACCESS",
        containerId="c1",
        since=since,
        until=until,
        order="ASC",
    )
    rest = await operation.rest(
        "/orgs/acme/container_events/by_access",
        container_id="c1",
        since=since,
        until=until,
        order="asc",
    )
    assert [int(node["id"]) for node in narrowed] == [item["id"] for item in rest["events"]]
    assert [int(node["id"]) for node in narrowed] == [rows[7]["id"]]

    first_page = await operation.run()
    assert first_page["org"]["id"] == "acme"
    assert first_page["org"]["events"]["pageInfo"]["hasPreviousPage"] is False


async def expect_container_events(operation: Operation, rows: list[EventRecord]) -> None:
    nodes = await walk_events(operation, container_events)
    rest = await operation.rest("/orgs/acme/containers/c1/events")
    assert [int(node["id"]) for node in nodes] == [item["id"] for item in rest["events"]]
    assert [int(node["id"]) for node in nodes] == [
        row["id"] for row in reversed(rows) if row["container_id"] == "c1"
    ]

    failed = await operation.run(filter="FAIL", first=10)
    assert node_ids(container_events(failed)) == [rows[10]["id"]]
    container = failed["org"]["container"]
    assert container["id"] == "c1"
    assert datetime.fromisoformat(container["lastEventAt"]) == rows[10]["timestamp"]


async def expect_containers(operation: Operation, rows: list[EventRecord]) -> None:
    ids: list[str] = []
    after = None
    while True:
        page = (await operation.run(after=after))["org"]["containers"]
        ids += [edge["node"]["id"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert ids == ["c1", "c2", "c3"]

    data = await operation.run(first=10)
    last_event_at = {
        edge["node"]["id"]: datetime.fromisoformat(edge["node"]["lastEventAt"])
        for edge in data["org"]["containers"]["edges"]
    }
    assert last_event_at["c3"] == max(
        row["timestamp"] for row in rows if row["container_id"] == "c3"
    )


async def expect_log_container_event(operation: Operation, rows: list[EventRecord]) -> None:
    payload = (await operation.run())["logContainerEvent"]

    assert payload["message"] == "Event logged successfully"
    event = payload["event"]
    assert event["eventType"] == "ACCESS"
    assert event["status"] == "FAILURE"
    assert event["actor"] == "alice"
    assert event["details"] == {"ip": "10.0.0.1"}
    assert datetime.fromisoformat(event["timestamp"]) == datetime.fromisoformat(
        "2023-11-18T13:30:00+00:00"
    )
    assert event["container"]["id"] == "c1"
    assert datetime.fromisoformat(event["container"]["lastEventAt"]) > BASE_TIME
    rest = await operation.rest("/orgs/acme/containers/c1/events", limit=1)
    assert [item["id"] for item in rest["events"]] == [int(event["id"])]
    assert int(event["id"]) > max(row["id"] for row in rows)
    assert await count_events(operation.db) == len(rows) + 1


async def expect_log_container_events(operation: Operation, rows: list[EventRecord]) -> None:
    payload = (await operation.run())["logContainerEvents"]

    assert payload["message"] == "Events logged successfully"
    assert payload["count"] == 2
    rest = await operation.rest("/orgs/acme/events", limit=2)
    newest_first = rest["events"]
    assert [str(item["id"]) for item in reversed(newest_first)] == payload["ids"]
    assert [(item["container_id"], item["event_type"], item["actor"]) for item in newest_first] == [
        ("c1", "ACCESS", "bob"),
        ("c4", "CREATE", None),
    ]
    assert await count_events(operation.db) == len(rows) + 2


async def expect_event_counts(operation: Operation, rows: list[EventRecord]) -> None:
    for by in ("TYPE", "STATUS", "CONTAINER", "HOUR", "DAY"):
        data = (await operation.run(by=by))["org"]
        rest = await operation.rest(
            "/orgs/acme/events/counts", by=by, since=VARIABLES["since"], until=VARIABLES["until"]
        )
        assert data["eventCounts"] == rest["counts"]
        assert sum(bucket["count"] for bucket in data["eventCounts"]) == len(rows)
        assert data["events"]["totalCount"] == rest["total"] == len(rows)

    by_type = (await operation.run())["org"]["eventCounts"]
    assert by_type[0] == {"key": "ACCESS", "count": 3}
    failed = (await operation.run(by="CONTAINER", filter="FAIL"))["org"]
    assert failed["eventCounts"] == [{"key": "c2", "count": 3}, {"key": "c1", "count": 1}]
    assert failed["events"]["totalCount"] == 4


async def expect_live_container_events(operation: Operation, rows: list[EventRecord]) -> None:
    replayed = await operation.stream(len(rows) - 1, after=encode_event_cursor(rows[0]["id"]))
    events = [data["containerEvents"] for data in replayed]
    assert [int(event["id"]) for event in events] == [row["id"] for row in rows[1:]]
    assert [event["container"]["id"] for event in events] == [
        row["container_id"] for row in rows[1:]
    ]

    rest = await operation.rest(
        "/orgs/acme/container_events/by_fail", container_id="c2", order="asc"
    )
    failed = await operation.stream(
        len(rest["events"]), filter="FAIL", containerId="c2", after=encode_event_cursor(0)
    )
    assert [int(data["containerEvents"]["id"]) for data in failed] == [
        item["id"] for item in rest["events"]
    ]

    live = asyncio.create_task(operation.stream(1, after=encode_event_cursor(rows[-1]["id"])))
    await asyncio.sleep(0.1)
    [new] = await make_events(operation.db, "acme", [("c4", {"event_type": "DELETE"})])
    [data] = await asyncio.wait_for(live, 5)
    assert int(data["containerEvents"]["id"]) == new["id"]
    assert data["containerEvents"]["eventType"] == "DELETE"


async def answers_without_errors(operation: Operation, rows: list[EventRecord]) -> None:
    """All a new file gets until it has an entry in EXPECTATIONS."""
    assert await operation.run()


EXPECTATIONS: dict[str, Expectation] = {
    "AccessEvents": filtered_list(EventFilter.ACCESS),
    "BlockEvents": filtered_list(EventFilter.BLOCK),
    "CreateEvents": filtered_list(EventFilter.CREATE),
    "ExpireEvents": filtered_list(EventFilter.EXPIRE),
    "FailedEvents": filtered_list(EventFilter.FAIL),
    "OrgEvents": expect_org_events,
    "ContainerEvents": expect_container_events,
    "Containers": expect_containers,
    "LogContainerEvent": expect_log_container_event,
    "LogContainerEvents": expect_log_container_events,
    "EventCounts": expect_event_counts,
    "LiveContainerEvents": expect_live_container_events,
}


def test_the_queries_folder_has_operations():
    assert QUERIES


@pytest.mark.parametrize("path", QUERIES, ids=operation_name)
def test_each_file_is_one_operation_named_like_the_file_and_valid(path: Path):
    document = graphql.parse(path.read_text())
    errors = graphql.validate(graphql.build_schema(build_schema().as_str()), document)

    assert errors == []
    [operation] = document.definitions
    assert isinstance(operation, graphql.OperationDefinitionNode)
    assert operation.name is not None
    assert operation.name.value == operation_name(path)
    missing = {
        name for name, required in declared_variables(document).items() if required
    } - VARIABLES.keys()
    assert not missing, f"add a value for {missing} to VARIABLES"


@pytest.mark.parametrize("path", QUERIES, ids=operation_name)
def test_each_file_says_what_a_frontend_gets(path: Path):
    assert operation_name(path) in EXPECTATIONS, (
        f"{path.name}: add what its answer must be to EXPECTATIONS in {Path(__file__).name}"
    )


@pytest.mark.parametrize("path", QUERIES, ids=operation_name)
async def test_each_operation_answers_what_a_frontend_expects(client, db, acme_key, path: Path):
    rows = await make_events(db, "acme", SCENARIO)
    operation = Operation(client=client, db=db, key=acme_key, text=path.read_text())

    expect = EXPECTATIONS.get(operation_name(path), answers_without_errors)

    await expect(operation, rows)
