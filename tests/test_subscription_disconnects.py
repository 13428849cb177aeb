"""Clients that leave are no error: `events-gateway serve` logs them without a traceback.

The server runs as in production (the CLI, JSON log lines on stderr, kept in a file) on a
temporary SQLite file, and on the PostgreSQL database of EVENTS_GATEWAY_TEST_POSTGRES_URL
when set. Clients vanish at each stage: during connection_init with a refused key, mid-stream
with events being written, and while the server waits for room to send to them. Each leaves
one access line ("websocket closed") and nothing at error level; a real fault still does.
"""

import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from storage.database import Database
from tests.conftest import POSTGRES_URL_VARIABLE
from tests.factories import make_org, new_event
from tests.servers import ROOT, free_port, server_process

SUBSCRIPTION = (ROOT / "queries" / "LiveContainerEvents.graphql").read_text()
PROTOCOLS = [Subprotocol("graphql-transport-ws")]
RECEIVE_TIMEOUT = 10.0


@dataclass
class Server:
    url: str
    base: str
    key: str
    log: Path

    @property
    def socket_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/graphql"

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    async def errors_after(self, count: int, sockets: int) -> list[dict[str, Any]]:
        """What was logged at error level, or with a traceback, past the first `count`
        records, once `sockets` sockets have logged their close there (each logs one)."""
        deadline = time.monotonic() + RECEIVE_TIMEOUT
        while True:
            records = self.records()[count:]
            closed = sum(r["message"].startswith("websocket closed") for r in records)
            if closed >= sockets:
                return [
                    r for r in records if r["level"] in ("error", "critical") or "traceback" in r
                ]
            assert time.monotonic() < deadline, f"{closed} of {sockets} sockets logged a close"
            await asyncio.sleep(0.05)  # the loop runs: an aborted socket really closes


def _database_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"PostgreSQL not configured: set {POSTGRES_URL_VARIABLE}")
    return url


async def _create(url: str) -> str:
    db = Database(url)
    try:
        if db.dialect == "postgresql":
            await db.drop_schema()
        await db.create_schema()
        key = await make_org(db, "acme")
        # More than the sockets' buffers hold (compression off): a replay that fills them.
        for _ in range(6):
            await db.writer.log("acme", [("c2", new_event(details={"x": "y" * 8_000}))] * 500)
        return key
    finally:
        await db.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("disconnects")
    url = _database_url(request.param, folder)
    key = asyncio.run(_create(url))
    port = free_port()
    command = [sys.executable, "-m", "gateway", "--database-url", url, "serve", "--port"]
    log = folder / "server.log"
    with log.open("wb") as stderr, server_process([*command, str(port)], port, stderr=stderr):
        yield Server(url, f"http://127.0.0.1:{port}", key, log)


async def opened(server: Server, **options: Any) -> ClientConnection:
    return await connect(server.socket_url, subprotocols=PROTOCOLS, **options)


async def init(socket: ClientConnection, key: str | None) -> None:
    payload = {} if key is None else {"Authorization": f"Bearer {key}"}
    await socket.send(json.dumps({"type": "connection_init", "payload": payload}))


async def subscribe(socket: ClientConnection, key: str, **variables: Any) -> None:
    await init(socket, key)
    assert json.loads(await asyncio.wait_for(socket.recv(), RECEIVE_TIMEOUT))["type"] == (
        "connection_ack"
    )
    payload = {"query": SUBSCRIPTION, "variables": {"orgId": "acme", **variables}}
    await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))


async def leave(socket: ClientConnection, abruptly: bool) -> None:
    if abruptly:
        socket.transport.abort()  # no close frame: the TCP connection just ends
    else:
        await socket.close()


def event_cursor(event_id: int) -> str:
    return base64.urlsafe_b64encode(f"e{event_id}".encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("abruptly", [True, False], ids=["aborted", "closed"])
@pytest.mark.parametrize("key", ["egw_unknown", None], ids=["refused key", "no key"])
async def test_a_client_leaving_during_connection_init_is_logged_without_error(
    server: Server, key: str | None, abruptly: bool
):
    start = len(server.records())
    for _ in range(3):
        socket = await opened(server)
        await init(socket, key)
        await leave(socket, abruptly)

    assert await server.errors_after(start, sockets=3) == []


@pytest.fixture
async def writing(server: Server) -> AsyncIterator[None]:
    """Events posted to the server every 20 ms while the test runs (through its own writer,
    so its subscribers are woken at once on SQLite too, not at the next poll)."""
    url = f"{server.base}/orgs/acme/containers/c1/events"
    headers = {"Authorization": f"Bearer {server.key}"}
    body = {"event_type": "ACCESS", "timestamp": "2023-11-18T12:00:00Z"}

    async def write(client: httpx.AsyncClient) -> None:
        while True:
            (await client.post(url, json=body, headers=headers)).raise_for_status()
            await asyncio.sleep(0.02)

    async with httpx.AsyncClient() as client:
        task = asyncio.create_task(write(client))
        yield
        task.cancel()
        await asyncio.wait({task})
        assert task.cancelled(), task.exception()


@pytest.mark.parametrize("abruptly", [True, False], ids=["aborted", "closed"])
async def test_a_client_leaving_mid_stream_is_logged_without_error(
    server: Server, writing: None, abruptly: bool
):
    start = len(server.records())
    for round_ in range(10):
        socket = await opened(server)
        await subscribe(socket, server.key, containerId="c1")
        for _ in range(1 + round_ % 3):
            await asyncio.wait_for(socket.recv(), RECEIVE_TIMEOUT)
        await leave(socket, abruptly)

    assert await server.errors_after(start, sockets=10) == []


@pytest.mark.parametrize("abruptly", [True, False], ids=["aborted", "closed"])
async def test_a_client_leaving_while_the_server_waits_to_send_is_logged_without_error(
    server: Server, abruptly: bool
):
    start = len(server.records())
    socket = await opened(server, compression=None, max_queue=1)
    await subscribe(socket, server.key, containerId="c2", after=event_cursor(0))
    await asyncio.wait_for(socket.recv(), RECEIVE_TIMEOUT)
    await asyncio.sleep(0.5)  # not reading: the server's sends wait for room
    await socket.send(json.dumps({"type": "ping"}))  # its pong waits too
    await asyncio.sleep(0.2)
    await leave(socket, abruptly)

    assert await server.errors_after(start, sockets=1) == []


async def test_a_fault_while_streaming_is_still_logged_as_an_error(server: Server):
    start = len(server.records())
    db = Database(server.url)
    try:
        async with db.session() as session:
            await session.execute(text("ALTER TABLE events RENAME TO events_away"))
            await session.commit()
        try:
            socket = await opened(server)
            await subscribe(socket, server.key, after=event_cursor(0))
            message = json.loads(await asyncio.wait_for(socket.recv(), RECEIVE_TIMEOUT))
            await socket.close()
        finally:
            async with db.session() as session:
                await session.execute(text("ALTER TABLE events_away RENAME TO events"))
                await session.commit()
    finally:
        await db.dispose()

    assert message["type"] in ("next", "error"), message
    faults = await server.errors_after(start, sockets=1)
    # The org's tail may meet the missing table too, and says so once, on its own logger.
    by_logger = {fault["logger"]: fault for fault in faults}
    assert len(by_logger) == len(faults), faults  # nothing logged twice
    assert set(by_logger) <= {"schema.subscription", "storage.broker"}, faults
    fault = by_logger["schema.subscription"]
    assert fault["message"] == "subscription containerEvents failed"
    assert "traceback" in fault
