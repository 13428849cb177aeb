"""Transport limits: the per-request time limit in-process; header size, keep-alive and
concurrent connections against a real `events-gateway serve` process."""

import asyncio
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

import storage.database
from gateway import rest
from gateway.app import create_app
from gateway.config import Settings
from storage.database import Database
from tests.factories import auth, count_events
from tests.rest_assertions import assert_problem
from tests.servers import free_port, server_process

ROOT = Path(__file__).resolve().parent.parent
SERVE = str(Path(sys.executable).parent / "events-gateway")
START_TIMEOUT = 20.0


@dataclass
class Served:
    base: str
    port: int
    stderr: Path


@contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[Served]:
    """`events-gateway serve` on a free 127.0.0.1 port over a new SQLite file; `env` adds
    EVENTS_GATEWAY_* settings. Its stderr goes to a file, `stderr`."""
    port = free_port()
    url = f"sqlite+aiosqlite:///{tmp_path / 'served.db'}"
    environment = {**os.environ, **{f"EVENTS_GATEWAY_{k}": v for k, v in env.items()}}
    command = [SERVE, "serve", "--port", str(port), "--database-url", url]
    with (
        open(tmp_path / "stderr.log", "wb") as stderr,
        server_process(
            command, port, env=environment, stderr=stderr, start_timeout=START_TIMEOUT
        ) as base,
    ):
        yield Served(base, port, tmp_path / "stderr.log")


def _raw_request(port: int, head: bytes, *, chunk: int | None = None) -> bytes:
    """Send a request head over a plain socket, in chunks if asked; the server's first bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        try:
            if chunk is None:
                connection.sendall(head)
            else:
                for start in range(0, len(head), chunk):
                    connection.sendall(head[start : start + chunk])
                    time.sleep(0.001)
        except OSError:
            pass  # the server may answer and close before it has read everything
        return connection.recv(4096)


def _head_with_header(size: int) -> bytes:
    return b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp_path = tmp_path_factory.mktemp("served")
    with serving(tmp_path, KEEP_ALIVE_TIMEOUT="1", MAX_CONNECTIONS="4") as server:
        yield server


# --- request time limit (in-process) ---------------------------------------------------------


@pytest.fixture
def quick_app(db: Database) -> Starlette:
    return create_app(
        Settings(database_url=db.url, key_cache_seconds=0, request_timeout=0.3), db=db
    )


async def _answer(app: Starlette, method: str, path: str, **kwargs: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, path, **kwargs)  # type: ignore[arg-type]


async def test_a_rest_request_past_its_time_limit_answers_503_and_is_cancelled(
    quick_app, acme_key, monkeypatch
):
    cancelled = asyncio.Event()

    async def slow(*_args: object, **_kwargs: object) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    monkeypatch.setattr(rest, "list_events", slow)
    started = time.monotonic()
    answer = await _answer(quick_app, "GET", "/orgs/acme/events", headers=auth(acme_key))

    body = assert_problem(answer, 503)
    assert "0.3 seconds" in body["detail"]
    assert time.monotonic() - started < 5
    assert cancelled.is_set()


async def test_a_graphql_request_past_its_time_limit_answers_a_timeout_error(
    quick_app, acme_key, monkeypatch
):
    cancelled = asyncio.Event()

    async def slow(*_args: object, **_kwargs: object) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    # The compiled plans (schema.compiled) and the resolvers both read the org through it.
    monkeypatch.setattr(storage.database, "get_org", slow)
    answer = await _answer(
        quick_app,
        "POST",
        "/graphql",
        json={"query": '{ org(id: "acme") { id } }'},
        headers=auth(acme_key),
    )

    assert answer.status_code == 503
    body = answer.json()
    assert body["data"] is None
    assert [error["extensions"]["code"] for error in body["errors"]] == ["TIMEOUT"]
    assert cancelled.is_set()


async def test_a_request_within_its_time_limit_is_answered_as_usual(quick_app, db, acme_key):
    answer = await _answer(
        quick_app,
        "POST",
        "/orgs/acme/containers/vault-1/events",
        json={"event_type": "ACCESS"},
        headers=auth(acme_key),
    )

    assert answer.status_code == 200
    assert await count_events(db) == 1


# --- against a real server --------------------------------------------------------------------


def test_a_100_kb_header_answers_431_without_harm(served):
    answer = _raw_request(served.port, _head_with_header(100 * 1024))

    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"application/problem+json" in answer
    assert httpx.get(served.base + "/openapi.json").status_code == 200  # still serving


def test_a_huge_header_arriving_in_pieces_is_refused_before_it_is_all_buffered(served):
    answer = _raw_request(served.port, _head_with_header(4 * 1024 * 1024), chunk=16 * 1024)

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert httpx.get(served.base + "/openapi.json").status_code == 200


def test_headers_under_the_limit_are_served(served):
    answer = _raw_request(served.port, _head_with_header(8 * 1024))

    assert answer.startswith(b"HTTP/1.1 200 ")


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as connection:
        connection.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        first = connection.recv(1 << 20)
        assert first.startswith(b"HTTP/1.1 200 ")
        time.sleep(2.5)  # KEEP_ALIVE_TIMEOUT=1
        leftover = b""
        while chunk := connection.recv(1 << 20):  # the rest of the first answer, then EOF
            leftover += chunk
        assert b"HTTP/1.1" not in leftover


def test_connections_over_the_limit_answer_503(served):
    idle = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(4)]
    try:
        time.sleep(0.3)  # let the server accept them
        answer = httpx.get(served.base + "/openapi.json")
        assert answer.status_code == 503
    finally:
        for connection in idle:
            connection.close()
    time.sleep(0.3)
    assert httpx.get(served.base + "/openapi.json").status_code == 200
