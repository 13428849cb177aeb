"""Persisted-operations mode: only queries/*.graphql run, named by text, hash or documentId."""

import asyncio
import json
import os
import re
import signal
import subprocess
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from bench.http import Target, serving
from bench.ingest import create_database
from gateway.app import create_app
from gateway.cli import main
from gateway.config import Settings
from gateway.persisted import PersistedOperations, sha256
from storage.database import Database
from tests.factories import auth, count_events

QUERIES = Path(__file__).parent.parent / "queries"
ORG_EVENTS = (QUERIES / "OrgEvents.graphql").read_text()
LOG_EVENT = (QUERIES / "LogContainerEvent.graphql").read_text()
LOG_VARIABLES = {"orgId": "acme", "containerId": "vault-1", "event": {"eventType": "ACCESS"}}
AD_HOC_MUTATION = """
mutation { logContainerEvent(orgId: "acme", containerId: "vault-1", event: {eventType: ACCESS}) {
  message } }
"""


@pytest.fixture
def app(db: Database) -> Starlette:
    settings = Settings(database_url=db.url, key_cache_seconds=0, graphql_persisted_only=True)
    return create_app(settings, db=db)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def post(client: httpx.AsyncClient, key: str, body: dict) -> httpx.Response:
    return await client.post("/graphql", json=body, headers=auth(key))


def error_code(response: httpx.Response) -> str:
    [error] = response.json()["errors"]
    return error["extensions"]["code"]


async def test_a_stored_operation_sent_as_its_text_runs(client, acme_key):
    response = await post(client, acme_key, {"query": ORG_EVENTS, "variables": {"orgId": "acme"}})

    assert response.status_code == 200
    assert response.json()["data"]["org"]["id"] == "acme"


async def test_a_stored_operation_without_comments_and_on_one_line_runs(client, acme_key):
    query = " ".join(re.sub(r"#.*", "", ORG_EVENTS).split())

    response = await post(client, acme_key, {"query": query, "variables": {"orgId": "acme"}})

    assert response.status_code == 200
    assert response.json()["data"]["org"]["id"] == "acme"


async def test_apollo_persisted_query_hash_runs_the_stored_operation(client, acme_key):
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": sha256(ORG_EVENTS)}}

    response = await post(
        client, acme_key, {"extensions": extensions, "variables": {"orgId": "acme"}}
    )

    assert response.status_code == 200
    assert response.json()["data"]["org"]["id"] == "acme"


@pytest.mark.parametrize("document_id", ["OrgEvents", f"sha256:{sha256(ORG_EVENTS)}"])
async def test_a_document_id_by_name_or_hash_runs_the_stored_operation(
    client, acme_key, document_id
):
    response = await post(
        client, acme_key, {"documentId": document_id, "variables": {"orgId": "acme"}}
    )

    assert response.status_code == 200
    assert response.json()["data"]["org"]["id"] == "acme"


async def test_a_document_id_over_get_runs_the_stored_operation(client, acme_key):
    params = {"documentId": "OrgEvents", "variables": json.dumps({"orgId": "acme"})}

    headers = {**auth(acme_key), "Accept": "application/json"}

    response = await client.get("/graphql", params=params, headers=headers)

    assert response.status_code == 200
    assert response.json()["data"]["org"]["id"] == "acme"


async def test_a_stored_mutation_by_document_id_stores_its_event(client, db, acme_key):
    body = {"documentId": "LogContainerEvent", "variables": LOG_VARIABLES}

    response = await post(client, acme_key, body)

    assert response.status_code == 200, response.text
    assert await count_events(db) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"documentId": "DropEverything"},
        {"documentId": "sha256:" + "0" * 64},
        {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}},
        {"variables": {"orgId": "acme"}},
    ],
    ids=["unknown name", "unknown document hash", "unknown apollo hash", "nothing named"],
)
async def test_an_unknown_id_or_hash_is_persisted_query_not_found(client, acme_key, body):
    response = await post(client, acme_key, body)

    assert response.status_code == 400
    assert error_code(response) == "PERSISTED_QUERY_NOT_FOUND"


async def test_an_ad_hoc_query_is_refused(client, acme_key):
    response = await post(client, acme_key, {"query": '{ org(id: "acme") { id } }'})

    assert response.status_code == 400
    assert error_code(response) == "OPERATION_NOT_PERSISTED"
    assert response.json()["data"] is None


async def test_an_ad_hoc_mutation_is_refused_and_stores_nothing(client, db, acme_key):
    response = await post(client, acme_key, {"query": AD_HOC_MUTATION})

    assert response.status_code == 400
    assert error_code(response) == "OPERATION_NOT_PERSISTED"
    assert await count_events(db) == 0


async def test_a_query_that_differs_from_the_operation_it_names_is_refused(client, db, acme_key):
    body = {"documentId": "OrgEvents", "query": AD_HOC_MUTATION}

    response = await post(client, acme_key, body)

    assert response.status_code == 400
    assert error_code(response) == "OPERATION_NOT_PERSISTED"
    assert await count_events(db) == 0


async def test_a_changed_stored_operation_is_not_persisted(client, acme_key):
    query = ORG_EVENTS.replace("receivedAt", "receivedAt actor")

    response = await post(client, acme_key, {"query": query, "variables": {"orgId": "acme"}})

    assert response.status_code == 400
    assert error_code(response) == "OPERATION_NOT_PERSISTED"


async def test_without_the_mode_an_ad_hoc_query_runs(db, acme_key):
    app = create_app(Settings(database_url=db.url, key_cache_seconds=0), db=db)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        response = await post(client, acme_key, {"query": '{ org(id: "acme") { id } }'})

    assert response.json() == {"data": {"org": {"id": "acme"}}}


def test_the_cli_lists_each_stored_operation_with_its_hash(capsys):
    main(["queries"])

    lines = capsys.readouterr().out.splitlines()
    stored = {path.stem: sha256(path.read_text()) for path in QUERIES.glob("*.graphql")}
    assert dict(line.split("\t") for line in lines) == stored


def test_every_stored_operation_is_named_after_its_file():
    names = {operation.name for operation in PersistedOperations.from_folder(QUERIES)}

    assert names == {path.stem for path in QUERIES.glob("*.graphql")}


# Over WebSocket: the same rule, on a server started with EVENTS_GATEWAY_GRAPHQL_PERSISTED_ONLY=1.


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The base URL and acme's key of a persisted-only gateway under uvicorn."""
    path = tmp_path_factory.mktemp("persisted") / "events.db"
    key = asyncio.run(create_database(path, "acme"))
    env = {
        **os.environ,
        "EVENTS_GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{path}",
        "EVENTS_GATEWAY_GRAPHQL_PERSISTED_ONLY": "1",
    }
    pid = 0
    try:
        with serving(Target("gateway", "gateway.app:create_app", True, "/graphql"), env) as (
            base,
            pid,
        ):
            yield base, key
    except subprocess.TimeoutExpired:
        # Not what these tests check: a server that streamed a subscription sometimes outlives
        # SIGTERM (test_subscriptions' servers too). Leave no process behind; say it was seen.
        os.kill(pid, signal.SIGKILL)
        warnings.warn("the gateway did not stop within 10 s of SIGTERM", stacklevel=1)


async def first_answer(server: tuple[str, str], payload: dict) -> dict:
    """The server's first answer to a subscribe with `payload`, after connection_init."""
    base, key = server
    url = base.replace("http://", "ws://") + "/graphql"
    async with connect(url, subprotocols=[Subprotocol("graphql-transport-ws")]) as socket:
        await socket.send(json.dumps({"type": "connection_init", "payload": auth(key)}))
        assert json.loads(await asyncio.wait_for(socket.recv(), 10))["type"] == "connection_ack"
        await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        return json.loads(await asyncio.wait_for(socket.recv(), 10))


async def test_an_ad_hoc_subscription_is_refused_over_websocket(server):
    query = 'subscription { containerEvents(orgId: "acme") { id } }'

    answer = await first_answer(server, {"query": query})

    assert answer["type"] == "error"
    assert answer["payload"][0]["extensions"]["code"] == "OPERATION_NOT_PERSISTED"


async def test_a_stored_subscription_by_document_id_streams_over_websocket(server):
    base, key = server
    async with httpx.AsyncClient(base_url=base, headers=auth(key)) as http:
        for container in ("vault-1", "vault-2"):
            event = {"event_type": "ACCESS"}
            posted = await http.post(f"/orgs/acme/containers/{container}/events", json=event)
            assert posted.is_success, posted.text
        oldest = {"orgId": "acme", "order": "ASC", "first": 1}
        page = await http.post("/graphql", json={"documentId": "OrgEvents", "variables": oldest})
    after = page.json()["data"]["org"]["events"]["edges"][0]["cursor"]

    # Replayed after the first event, the stream answers at once with the second.
    variables = {"orgId": "acme", "after": after}
    answer = await first_answer(
        server, {"documentId": "LiveContainerEvents", "variables": variables}
    )

    assert answer["type"] == "next", answer
    assert answer["payload"]["data"]["containerEvents"]["container"]["id"] == "vault-2"
