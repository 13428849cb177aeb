"""/healthz, /readyz and /metrics: open without a key, bounded labels, honest counts."""

import asyncio
import json
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.exceptions import StarletteDeprecationWarning

from gateway.app import create_app
from gateway.config import Settings
from gateway.openapi import openapi_document
from storage.database import Database
from tests.factories import auth, make_org
from tests.rest_assertions import assert_problem

with warnings.catch_warnings():
    # Starlette warns that its TestClient will move off httpx; it is the in-process WebSocket
    # client this module needs (a subscription open while /metrics is scraped).
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient, WebSocketTestSession

ROOT = Path(__file__).resolve().parent.parent
ORG_EVENTS = (ROOT / "queries" / "OrgEvents.graphql").read_text()
SUBSCRIPTION = (ROOT / "queries" / "LiveContainerEvents.graphql").read_text()
OPS_PATHS = ("/healthz", "/readyz", "/metrics")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def _closed_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_healthz_answers_ok_without_a_key(client):
    answer = await client.get("/healthz")

    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


async def test_readyz_answers_ready_when_the_database_answers(client):
    answer = await client.get("/readyz")

    assert answer.status_code == 200
    assert answer.json() == {"status": "ready"}


@pytest.mark.parametrize("backend", ["sqlite_in_a_removed_directory", "postgresql_closed_port"])
async def test_readyz_answers_503_problem_when_the_database_is_unreachable(tmp_path, backend):
    url = {
        "sqlite_in_a_removed_directory": f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'events.db'}",
        "postgresql_closed_port": (
            f"postgresql+asyncpg://gateway:s3cret-password@127.0.0.1:{_closed_port()}/events"
        ),
    }[backend]
    db = Database(url)
    app = create_app(Settings(database_url=url), db=db)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            ready = await client.get("/readyz")
            healthy = await client.get("/healthz")
    finally:
        await db.dispose()

    body = assert_problem(ready, 503)
    assert "database" in body["detail"].lower()
    assert "s3cret" not in ready.text and "gone" not in ready.text
    # Liveness asks nothing of the database: the process is up.
    assert healthy.status_code == 200 and healthy.json() == {"status": "ok"}


async def test_the_ops_endpoints_are_not_in_the_rest_document(client):
    answers = [await client.get(path) for path in OPS_PATHS]

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert not set(OPS_PATHS) & set(openapi_document()["paths"])


async def test_metrics_parse_as_prometheus_text(client):
    answer = await client.get("/metrics")

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(answer.text)}
    assert {
        "events_gateway_http_requests",
        "events_gateway_http_request_duration_seconds",
        "events_gateway_graphql_requests",
        "events_gateway_events_written",
        "events_gateway_write_events",
        "events_gateway_write_transaction_events",
        "events_gateway_subscriptions",
        "events_gateway_subscription_held_bytes",
        "events_gateway_db_pool_checked_out",
        "events_gateway_db_pool_size",
    } <= names


async def _prepare(url: str) -> str:
    db = Database(url)
    try:
        if db.dialect == "postgresql":
            await db.drop_schema()
        await db.create_schema()
        return await make_org(db, "acme")
    finally:
        await db.dispose()


@pytest.fixture
def served(database_url: str) -> Iterator[tuple[TestClient, str]]:
    """The app with its lifespan running (commits feed subscriptions), and acme's key."""
    try:
        key = asyncio.run(_prepare(database_url))
    except OSError as error:
        pytest.skip(f"PostgreSQL is not reachable: {error}")
    with TestClient(create_app(Settings(database_url=database_url, key_cache_seconds=0))) as c:
        yield c, key


def scrape(client: TestClient) -> Samples:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    return samples(answer.text)


def wait_for_subscriptions(client: TestClient, expected: float) -> Samples:
    deadline = time.monotonic() + 10
    while True:
        scraped = scrape(client)
        if value(scraped, "events_gateway_subscriptions") == expected:
            return scraped
        assert time.monotonic() < deadline, f"subscriptions never reached {expected}"
        time.sleep(0.05)


def subscribe(socket: WebSocketTestSession, key: str) -> None:
    socket.send_json({"type": "connection_init", "payload": auth(key)})
    message = socket.receive()  # Strawberry sends text or bytes, depending on its version
    assert json.loads(message.get("text") or message["bytes"])["type"] == "connection_ack"
    socket.send_json(
        {
            "id": "1",
            "type": "subscribe",
            "payload": {"query": SUBSCRIPTION, "variables": {"orgId": "acme"}},
        }
    )


def test_metrics_count_requests_writes_and_subscriptions_with_bounded_labels(served):
    client, key = served
    before = scrape(client)

    for _ in range(2):
        assert client.get("/orgs/acme/events", headers=auth(key)).status_code == 200
    assert client.get("/orgs/ghost/events", headers=auth(key)).status_code == 404
    batch = [{"container_id": "c1", "event_type": "ACCESS"} for _ in range(3)]
    assert client.post("/orgs/acme/events", json=batch, headers=auth(key)).status_code == 200
    assert client.get("/orgs/acme/containers/c1/events", headers=auth(key)).status_code == 200
    query = {"query": ORG_EVENTS, "operationName": "OrgEvents", "variables": {"orgId": "acme"}}
    assert client.post("/graphql", json=query, headers=auth(key)).status_code == 200
    assert client.post("/graphql", json={"query": "{ __typename }"}).status_code == 401

    with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        subscribe(ws, key)
        during = wait_for_subscriptions(client, 1)
        ws.send_json({"id": "1", "type": "complete"})
    after = wait_for_subscriptions(client, 0)

    def grew(name: str, **labels: str) -> float:
        return value(during, name, **labels) - value(before, name, **labels)

    requests = "events_gateway_http_requests_total"
    assert grew(requests, method="GET", route="/orgs/{org_id}/events", status="200") == 2
    assert grew(requests, method="GET", route="/orgs/{org_id}/events", status="404") == 1
    assert grew(requests, method="POST", route="/orgs/{org_id}/events", status="200") == 1
    container_events = "/orgs/{org_id}/containers/{container_id}/events"
    assert grew(requests, method="GET", route=container_events, status="200") == 1
    latency = "events_gateway_http_request_duration_seconds_count"
    assert grew(latency, method="GET", route="/orgs/{org_id}/events") == 3
    graphql = "events_gateway_graphql_requests_total"
    assert grew(graphql, operation="OrgEvents", status="200") == 1
    assert grew(graphql, operation="anonymous", status="401") == 1
    assert grew("events_gateway_events_written_total") == 3
    assert grew("events_gateway_write_events_count") == 1
    assert grew("events_gateway_write_events_sum") == 3
    assert grew("events_gateway_write_transaction_events_sum") == 3
    assert value(during, "events_gateway_subscriptions") == 1
    assert value(after, "events_gateway_subscriptions") == 0
    # Route templates and operation names only: no key, org or container in any label.
    label_values = {v for _name, labels in after for _label, v in labels}
    assert not {v for v in label_values if key in v or "acme" in v or "ghost" in v}
    assert "c1" not in label_values
