"""Structured logs: one JSON access line per request, the request id on every line and answer,
and never an API key or an event's details."""

import hashlib
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway import rest
from gateway.logs import JSONFormatter
from storage.database import Database
from storage.keys import create_key
from tests.factories import auth, count_events
from tests.rest_assertions import assert_problem
from tests.test_transport import serving

ROOT = Path(__file__).resolve().parent.parent
LOG_EVENT = (ROOT / "queries" / "LogContainerEvent.graphql").read_text()
MARKER = "details-marker-5f0c2e9a"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
ACCESS_FIELDS = {
    "time",
    "level",
    "logger",
    "message",
    "request_id",
    "method",
    "path",
    "query",
    "status",
    "duration_ms",
    "bytes",
    "client",
    "user_agent",
}


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def access(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["logger"] == "gateway.access"]


@pytest.fixture
def logs() -> Iterator[Captured]:
    """Everything logged during the test, through the server's JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    # The test's own HTTP client logs the URLs it requests: the server's lines are what count.
    handler.addFilter(lambda record: not record.name.startswith(("httpx", "httpcore")))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield Captured(stream)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_each_request_writes_one_access_line_with_its_fields(client, acme_key, logs):
    answer = await client.get(
        "/orgs/acme/events?limit=5&order=asc",
        headers={**auth(acme_key), "User-Agent": "probe/1.0"},
    )

    assert answer.status_code == 200
    [line] = logs.access()
    assert line.keys() >= ACCESS_FIELDS
    assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0
    assert line["time"].endswith("Z")
    assert line["level"] == "info"
    assert line["request_id"] == answer.headers["x-request-id"]
    assert (line["method"], line["path"], line["query"]) == (
        "GET",
        "/orgs/acme/events",
        "limit=5&order=asc",
    )
    assert line["status"] == 200
    assert line["bytes"] == len(answer.content)
    assert 0 <= line["duration_ms"] < 60_000
    assert line["user_agent"] == "probe/1.0"
    assert line["client"]


@pytest.mark.parametrize("given", ["abc-123", "client.req:42_A-z", "x" * 128])
async def test_a_sane_request_id_is_echoed_and_logged(client, acme_key, logs, given):
    answer = await client.get(
        "/orgs/acme/events", headers={**auth(acme_key), "X-Request-ID": given}
    )

    assert answer.headers["x-request-id"] == given
    assert [line["request_id"] for line in logs.access()] == [given]


@pytest.mark.parametrize(
    "given", [None, "", "x" * 129, "has space", "semi;colon", "ünïcode".encode()]
)
async def test_a_missing_or_insane_request_id_is_replaced_by_a_generated_one(
    client, acme_key, logs, given
):
    headers = auth(acme_key)
    if given is not None:
        headers["X-Request-ID"] = given

    answer = await client.get("/orgs/acme/events", headers=headers)

    generated = answer.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(generated)
    assert [line["request_id"] for line in logs.access()] == [generated]


ERROR_REQUESTS = {
    "rest_401": ("GET", "/orgs/acme/events", {}, None, 401),
    "rest_404_path": ("GET", "/no/such/path", "key", None, 404),
    "rest_400_problem": ("GET", "/orgs/acme/events?limit=0", "key", None, 400),
    "rest_413_problem": ("POST", "/orgs/acme/containers/c/events", "key", b"x" * (2 << 20), 413),
    "graphql_unauthenticated": ("POST", "/graphql", {}, {"query": "{ __typename }"}, 401),
    "graphql_validation": ("POST", "/graphql", "key", {"query": "{ nope }"}, 200),
}


@pytest.mark.parametrize("case", ERROR_REQUESTS.values(), ids=ERROR_REQUESTS.keys())
async def test_error_answers_carry_the_request_id(client, acme_key, logs, case):
    method, path, headers, body, status = case
    headers = auth(acme_key) if headers == "key" else headers
    content = body if isinstance(body, bytes) else None
    payload = body if isinstance(body, dict) else None

    answer = await client.request(
        method,
        path,
        headers={**headers, "X-Request-ID": "err-1"},
        content=content,
        json=payload,
    )

    assert answer.status_code == status
    assert answer.headers["x-request-id"] == "err-1"
    if path == "/graphql":
        assert answer.json()["errors"][0]["extensions"]["code"]
    else:
        assert_problem(answer, status)
    [line] = logs.access()
    assert (line["request_id"], line["status"]) == ("err-1", status)


async def test_an_internal_fault_is_logged_once_with_its_id_and_traceback(
    app, acme_key, logs, monkeypatch
):
    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("something broke inside")

    monkeypatch.setattr(rest, "list_events", broken)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answer = await client.get(
            "/orgs/acme/events", headers={**auth(acme_key), "X-Request-ID": "boom-1"}
        )

    body = assert_problem(answer, 500)
    assert "something broke" not in answer.text and "errors" not in body
    assert answer.headers["x-request-id"] == "boom-1"
    [error] = [line for line in logs.lines() if line["level"] == "error"]
    assert error["request_id"] == "boom-1"
    assert error["exc_type"] == "builtins.RuntimeError"
    assert "something broke inside" in error["traceback"]
    assert [line["status"] for line in logs.access()] == [500]


async def test_no_line_holds_a_key_or_an_events_details(client, acme_key, logs):
    details = {"secret": MARKER}
    answers = [
        await client.post(
            "/orgs/acme/containers/vault-1/events",
            json={"event_type": "ACCESS", "details": details},
            headers=auth(acme_key),
        ),
        await client.post(
            "/orgs/acme/events",
            json=[{"container_id": "vault-2", "event_type": "BLOCK", "details": details}],
            headers={"X-API-Key": acme_key},
        ),
        await client.post(
            "/graphql",
            json={
                "query": LOG_EVENT,
                "variables": {
                    "orgId": "acme",
                    "containerId": "vault-3",
                    "event": {"eventType": "ACCESS", "details": details},
                },
            },
            headers=auth(acme_key),
        ),
        # Mistakes a client could make: the key and the details in the URL.
        await client.get(f"/orgs/acme/events?limit=5&api_key={acme_key}", headers=auth(acme_key)),
        await client.get(
            "/graphql",
            params={"query": f'{{ org(id: "acme") {{ id name }} }} # {MARKER}'},
            headers={"X-API-Key": acme_key, "Accept": "application/json"},
        ),
    ]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 400, 200]
    assert len(logs.access()) == len(answers)
    assert acme_key not in logs.text
    assert MARKER not in logs.text
    assert "api_key=REDACTED" in logs.text and "query=REDACTED" in logs.text


async def test_a_key_pasted_as_a_bare_parameter_or_a_cursor_is_not_logged(client, acme_key, logs):
    answers = [
        # `?egw_...`: the key is the parameter's name, with or without a value.
        await client.get(f"/orgs/acme/events?{acme_key}", headers=auth(acme_key)),
        await client.get(f"/orgs/acme/events?limit=5&{acme_key}=x", headers=auth(acme_key)),
        # In a parameter whose values are logged.
        await client.get(f"/orgs/acme/events?cursor={acme_key}", headers=auth(acme_key)),
    ]

    # Unknown parameters and a malformed cursor are refused; the refusals are logged too.
    assert [answer.status_code for answer in answers] == [400, 400, 400]
    [bare, named, cursor] = [line["query"] for line in logs.access()]
    assert acme_key not in logs.text
    assert acme_key.removeprefix("egw_")[:12] not in logs.text
    assert bare == "REDACTED=REDACTED"
    assert named == "limit=5&REDACTED=REDACTED"
    assert cursor == "cursor=REDACTED"


REFUSE_EVENTS = {
    "sqlite": [
        "CREATE TRIGGER refuse_events BEFORE INSERT ON events "
        "BEGIN SELECT RAISE(ABORT, 'events refused by the test'); END"
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION refuse_events() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'events refused by the test'; END $$",
        "CREATE TRIGGER refuse_events BEFORE INSERT ON events "
        "FOR EACH ROW EXECUTE FUNCTION refuse_events()",
    ],
}


async def test_a_write_the_database_refuses_logs_neither_its_details_nor_the_key(
    app, db: Database, acme_key, logs
):
    async with db.engine.begin() as connection:
        for statement in REFUSE_EVENTS[db.dialect]:
            await connection.execute(text(statement))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answer = await client.post(
            "/orgs/acme/containers/vault-1/events",
            json={"event_type": "ACCESS", "actor": MARKER, "details": {"secret": MARKER}},
            headers={**auth(acme_key), "X-Request-ID": "refused-1"},
        )

    assert_problem(answer, 500)
    assert await count_events(db) == 0
    errors = [line for line in logs.lines() if line["level"] == "error"]
    assert errors and all(line["request_id"] == "refused-1" for line in errors)
    assert "events refused by the test" in logs.text  # the database's own words are kept
    assert MARKER not in logs.text
    assert acme_key not in logs.text
    assert hashlib.sha256(acme_key.encode()).hexdigest() not in logs.text


async def test_serve_writes_json_lines_with_request_ids_on_stderr(tmp_path):
    with serving(tmp_path) as server:
        answer = httpx.get(
            server.base + "/orgs/acme/events?limit=1",
            headers={"X-Request-ID": "served-1", "Authorization": "Bearer not-a-key"},
        )
        socket_url = server.base.replace("http://", "ws://") + "/graphql"
        async with connect(
            socket_url,
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            additional_headers={"X-Request-ID": "socket-1"},
        ) as socket:
            assert socket.response.headers["x-request-id"] == "socket-1"
            await socket.send(json.dumps({"type": "connection_init", "payload": {}}))
            with pytest.raises(ConnectionClosed):
                await socket.recv()

    assert answer.status_code == 401
    assert answer.headers["x-request-id"] == "served-1"
    raw = server.stderr.read_text()
    lines = [json.loads(line) for line in raw.splitlines()]  # every line is one JSON object
    assert {"uvicorn.error", "gateway.access"} <= {line["logger"] for line in lines}
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]
    [access] = [line for line in lines if line.get("request_id") == "served-1"]
    assert (access["path"], access["status"], access["query"]) == (
        "/orgs/acme/events",
        401,
        "limit=1",
    )
    socket_lines = [
        line
        for line in lines
        if line["logger"] == "gateway.access" and line.get("request_id") == "socket-1"
    ]
    assert [line["message"].split()[:2] for line in socket_lines] == [
        ["websocket", "open"],
        ["websocket", "closed"],
    ]
    assert socket_lines[1]["close_code"] == 4401
    assert "not-a-key" not in raw


async def test_a_refused_key_insert_logs_no_key_hash(db: Database, logs):
    with pytest.raises(IntegrityError) as refused:
        async with db.session() as session:
            await create_key(session, org_id="no-such-org")  # no such org: a foreign key fails
    logging.getLogger("gateway.error").error("refused", exc_info=refused.value)

    [line] = logs.lines()
    assert line["exc_type"] == "sqlalchemy.exc.IntegrityError"
    assert "INSERT INTO api_keys" in line["traceback"]
    assert not SHA256_HEX.search(logs.text)
