"""Subscription.containerEvents over graphql-transport-ws, against a real server.

A uvicorn process on 127.0.0.1 and a free port serves a temporary SQLite file (and the
PostgreSQL database of EVENTS_GATEWAY_TEST_POSTGRES_URL when set); clients speak the protocol
over real sockets (connection_init, connection_ack, subscribe, next, error, complete) while
others write events over REST, as live agents do. The fan-out under it (storage.broker) is
checked on its own first.
"""

import asyncio
import base64
import json
import os
import sys
import tracemalloc
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from schema import build_schema
from schema.subscription import LiveContext
from storage import broker as broker_module
from storage.broker import Broker, fan_out, follow_events, newest_event_id
from storage.database import Database
from storage.domain import EventFilter
from storage.events import EventRecord
from tests.conftest import POSTGRES_URL_VARIABLE
from tests.factories import auth, make_org, new_event
from tests.servers import free_port, server_process

ROOT = Path(__file__).resolve().parent.parent
SUBSCRIPTION = (ROOT / "queries" / "LiveContainerEvents.graphql").read_text()
START_TIMEOUT = 20.0
RECEIVE_TIMEOUT = 10.0

SERVER = """
import sys
import uvicorn
from gateway.app import create_app
from gateway.config import Settings
from storage.broker import Broker

url, port, max_lag, poll_seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(
    sys.argv[4]
)
compiled = sys.argv[5] == "compiled"
settings = Settings(database_url=url, key_cache_seconds=0, graphql_compiled=compiled)
app = create_app(settings, broker=Broker(max_lag=max_lag, poll_seconds=poll_seconds))
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


@dataclass
class Server:
    base: str
    acme_key: str
    other_key: str

    @property
    def socket_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/graphql"


@contextmanager
def _serving(
    url: str, max_lag: int, poll_seconds: float = 5.0, compiled: bool = True
) -> Iterator[str]:
    port = free_port()
    plans = "compiled" if compiled else "graphql-core"
    command = [sys.executable, "-c", SERVER, url, str(port), str(max_lag), str(poll_seconds), plans]
    with server_process(command, port, start_timeout=START_TIMEOUT) as base:
        yield base


def _database_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"PostgreSQL not configured: set {POSTGRES_URL_VARIABLE}")
    return url


async def _start(url: str) -> tuple[str, str]:
    db = Database(url)
    try:
        if db.dialect == "postgresql":
            await db.drop_schema()
        await db.create_schema()
        acme_key = await make_org(db, "acme")
        other_key = await make_org(db, "other")
    finally:
        await db.dispose()
    return acme_key, other_key


@contextmanager
def server_with(url: str, max_lag: int = 10_000) -> Iterator[Server]:
    acme_key, other_key = asyncio.run(_start(url))
    with _serving(url, max_lag) as base:
        yield Server(base, acme_key, other_key)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One server per backend for the module: each test writes after its own start."""
    url = _database_url(request.param, tmp_path_factory.mktemp("subscriptions"))
    with server_with(url) as running:
        yield running


# The fan-out.


async def test_each_commit_wakes_the_orgs_subscribers_and_only_theirs(db: Database):
    await make_org(db, "acme")
    broker = Broker(poll_seconds=60)
    async with (
        fan_out(db, broker),
        broker.subscribe("acme") as acme,
        broker.subscribe("other") as other,
    ):
        if db.dialect == "postgresql":
            # Once listening, the listener wakes everyone: notices may have been missed.
            await asyncio.wait_for(acme.wait(), RECEIVE_TIMEOUT)
            await asyncio.wait_for(other.wait(), RECEIVE_TIMEOUT)
        await db.writer.log("acme", [("c1", new_event()), ("c2", new_event())])
        await asyncio.wait_for(acme.wait(), RECEIVE_TIMEOUT)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(other.wait(), 0.3)
        assert acme.published() == 2
        assert other.published() == 0


async def _take(events: AsyncIterator[EventRecord], count: int) -> list[int]:
    """The ids of the next `count` events of a stream, within the receive timeout."""

    async def take() -> list[int]:
        return [(await anext(events))["id"] for _ in range(count)]

    return await asyncio.wait_for(take(), RECEIVE_TIMEOUT)


async def test_a_replay_longer_than_the_tail_then_live_events_arrive_once_in_order(
    db: Database, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(broker_module, "TAIL_EVENTS", 5)  # trimmed to 5 past 10 held
    monkeypatch.setattr(broker_module, "FOLLOW_PAGE_SIZE", 7)
    await make_org(db, "acme")
    old = (await db.writer.log("acme", [("c1", new_event(i)) for i in range(30)])).rows
    broker = Broker(poll_seconds=60)
    async with fan_out(db, broker), broker.follow(db, "acme") as subscriber:
        events = follow_events(db, subscriber, after_id=old[3]["id"])
        async with aclosing(events):
            replayed = await _take(events, 26)
            live: list[int] = []
            for round_ in range(4):  # each write is 6 events: past the tail's trim each time
                batch = [("c1", new_event(100 + round_ * 6 + i)) for i in range(6)]
                live += [row["id"] for row in (await db.writer.log("acme", batch)).rows]
            streamed = await _take(events, 24)

    assert replayed == [row["id"] for row in old[4:]]
    assert streamed == live


async def test_filters_pick_from_the_shared_tail_what_queries_would(db: Database):
    await make_org(db, "acme")
    broker = Broker(poll_seconds=60)
    async with (
        fan_out(db, broker),
        broker.follow(db, "acme", "c2") as of_c2,
        broker.follow(db, "acme") as failures,
        broker.follow(db, "acme") as everything,
    ):
        start = await newest_event_id(db, "acme")
        streams = [
            follow_events(db, of_c2, after_id=start, container_id="c2"),
            follow_events(db, failures, after_id=start, event_filter=EventFilter.FAIL),
            follow_events(db, everything, after_id=start),
        ]
        specs = [
            ("c1", {}),
            ("c2", {"status": "FAILURE"}),
            ("c1", {"status": "FAILURE", "event_type": "BLOCK"}),
            ("c2", {"event_type": "CREATE"}),
        ]
        rows = (
            await db.writer.log("acme", [(c, new_event(i, **f)) for i, (c, f) in enumerate(specs)])
        ).rows
        ids = [row["id"] for row in rows]
        got = [await _take(streams[0], 2), await _take(streams[1], 2), await _take(streams[2], 4)]
        for stream in streams:
            await stream.aclose()

    assert got == [[ids[1], ids[3]], [ids[1], ids[2]], ids]


async def test_when_the_tail_cannot_read_subscribers_read_the_database_themselves(
    db: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    async def broken(self: broker_module.Tail, _notices: Any) -> None:
        raise ConnectionError("the tail's read failed")

    monkeypatch.setattr(broker_module.Tail, "_follow", broken)
    await make_org(db, "acme")
    broker = Broker(poll_seconds=60)
    async with fan_out(db, broker), broker.follow(db, "acme") as subscriber:
        events = follow_events(db, subscriber, after_id=0)
        async with aclosing(events):
            rows = (await db.writer.log("acme", [("c1", new_event(i)) for i in range(3)])).rows
            assert await _take(events, 3) == [row["id"] for row in rows]
    assert "the tail of org 'acme' failed" in caplog.text


async def test_a_long_subscription_does_not_keep_what_each_event_allocated(db: Database):
    if db.dialect != "sqlite":
        pytest.skip("what is measured is the schema's execution, the same on both databases")
    await make_org(db, "acme")
    await db.writer.log("acme", [("c1", new_event()) for _ in range(3_000)])
    context = LiveContext(db=db, org_id="acme", broker=Broker(poll_seconds=60))
    results = await build_schema().subscribe(
        SUBSCRIPTION,
        variable_values={"orgId": "acme", "after": event_cursor(0)},
        context_value=context,
    )
    assert isinstance(results, AsyncGenerator)
    received = 0
    tracemalloc.start()
    try:
        async with aclosing(results):
            async for result in results:
                assert not result.errors, result.errors
                received += 1
                if received == 500:  # one page of the stream read, a second started
                    before, _peak = tracemalloc.get_traced_memory()
                if received == 2_500:
                    after, _peak = tracemalloc.get_traced_memory()
                    break
    finally:
        tracemalloc.stop()

    # Kept per event, 2,000 events of a few KB each would be several MB.
    assert after - before < 1_000_000, f"{(after - before) / 2_000:.0f} bytes kept per event"


async def test_the_listener_reconnects_and_wakes_everyone_when_its_connection_drops(
    db: Database,
):
    if db.dialect != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    await make_org(db, "acme")
    broker = Broker(poll_seconds=60)
    async with fan_out(db, broker), broker.subscribe("acme") as acme:
        await asyncio.wait_for(acme.wait(), RECEIVE_TIMEOUT)
        async with db.session() as session:
            await session.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            )
        await asyncio.wait_for(acme.wait(), RECEIVE_TIMEOUT)  # reconnected: re-read
        await db.writer.log("acme", [("c1", new_event())])
        await asyncio.wait_for(acme.wait(), RECEIVE_TIMEOUT)
        assert acme.published() == 1


# The stream's own errors.


async def test_a_fault_while_streaming_is_masked_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'events.db'}")
    context = LiveContext(db=db, org_id="acme", broker=Broker())
    try:
        results = await build_schema().subscribe(
            SUBSCRIPTION, variable_values={"orgId": "acme"}, context_value=context
        )
        assert isinstance(results, AsyncGenerator)
        async with aclosing(results):
            result = await anext(results)
    finally:
        await db.dispose()

    assert result.errors is not None
    [error] = [error.formatted for error in result.errors]
    assert error["message"] == "Unexpected error."
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR"}
    assert "subscription containerEvents failed" in caplog.text


# The protocol, as a client speaks it.


async def _receive(socket: ClientConnection) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(socket.recv(), RECEIVE_TIMEOUT))
        if message["type"] != "ping":
            return message
        await socket.send(json.dumps({"type": "pong"}))


@asynccontextmanager
async def opened(server: Server, payload: dict[str, Any]) -> AsyncIterator[ClientConnection]:
    """A socket after connection_init with `payload`; acknowledged or closed by the server."""
    async with connect(server.socket_url, subprotocols=["graphql-transport-ws"]) as socket:
        await socket.send(json.dumps({"type": "connection_init", "payload": payload}))
        yield socket


@asynccontextmanager
async def acknowledged(server: Server, key: str) -> AsyncIterator[ClientConnection]:
    async with opened(server, {"Authorization": f"Bearer {key}"}) as socket:
        assert (await _receive(socket))["type"] == "connection_ack"
        yield socket


async def subscribe(socket: ClientConnection, operation_id: str, **variables: Any) -> None:
    await socket.send(
        json.dumps(
            {
                "id": operation_id,
                "type": "subscribe",
                "payload": {"query": SUBSCRIPTION, "variables": {"orgId": "acme", **variables}},
            }
        )
    )


async def next_events(socket: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next `count` events the server sends; fails on anything else."""
    events = []
    while len(events) < count:
        message = await _receive(socket)
        assert message["type"] == "next", message
        assert "errors" not in message["payload"], message
        events.append(message["payload"]["data"]["containerEvents"])
    return events


async def close_code(socket: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(socket.recv(), RECEIVE_TIMEOUT)
    assert socket.close_code is not None
    return socket.close_code


# Writing, as agents do.


async def post_events(
    http: httpx.AsyncClient, key: str, events: list[dict[str, Any]], org_id: str = "acme"
) -> list[int]:
    response = await http.post(f"/orgs/{org_id}/events", json=events, headers=auth(key))
    assert response.status_code == 200, response.text
    return [int(event_id) for event_id in response.json()["ids"]]


def event_cursor(event_id: int) -> str:
    return base64.urlsafe_b64encode(f"e{event_id}".encode()).rstrip(b"=").decode()


def ids(events: list[dict[str, Any]]) -> list[int]:
    return [int(event["id"]) for event in events]


def access(container_id: str = "c1", **fields: Any) -> dict[str, Any]:
    return {"container_id": container_id, "event_type": "ACCESS", **fields}


# The specification.


async def test_a_missing_key_closes_the_socket_with_4401(server: Server):
    async with opened(server, {}) as socket:
        assert await close_code(socket) == 4401


async def test_a_malformed_authorization_closes_the_socket_with_4401(server: Server):
    async with opened(server, {"authorization": f"Basic {server.acme_key}"}) as socket:
        assert await close_code(socket) == 4401


async def test_an_unknown_key_closes_the_socket_with_4403(server: Server):
    async with opened(server, {"Authorization": "Bearer not-a-key"}) as socket:
        assert await close_code(socket) == 4403


async def test_the_key_is_also_taken_as_x_api_key_in_any_case(server: Server):
    async with opened(server, {"x-API-key": server.acme_key}) as socket:
        assert (await _receive(socket))["type"] == "connection_ack"


async def test_over_http_a_subscription_answers_400(server: Server):
    async with httpx.AsyncClient(base_url=server.base) as http:
        response = await http.post(
            "/graphql",
            json={"query": SUBSCRIPTION, "variables": {"orgId": "acme"}},
            headers=auth(server.acme_key),
        )
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_another_orgs_events_answer_not_found(server: Server):
    async with acknowledged(server, server.other_key) as socket:
        await subscribe(socket, "1")
        message = await _receive(socket)
    assert message["type"] in ("next", "error"), message
    errors = message["payload"]["errors"] if message["type"] == "next" else message["payload"]
    assert errors[0]["extensions"]["code"] == "NOT_FOUND"


async def test_a_bad_after_cursor_answers_bad_user_input(server: Server):
    async with acknowledged(server, server.acme_key) as socket:
        await subscribe(socket, "1", after="not-a-cursor")
        message = await _receive(socket)
    errors = message["payload"]["errors"] if message["type"] == "next" else message["payload"]
    assert errors[0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_without_after_only_events_committed_later_are_sent(server: Server):
    async with httpx.AsyncClient(base_url=server.base) as http:
        history = await post_events(http, server.acme_key, [access(), access()])
        async with acknowledged(server, server.acme_key) as socket:
            await subscribe(socket, "1")
            # When the stream starts is the server's to say: write until one arrives.
            first = asyncio.create_task(next_events(socket, 1))
            written: list[int] = []
            while not first.done():
                written += await post_events(http, server.acme_key, [access("c2")])
                await asyncio.wait({first}, timeout=0.1)
            [event] = first.result()
            later = await post_events(http, server.acme_key, [access("c3")])
            expected = [event_id for event_id in written if event_id > int(event["id"])] + later
            rest = await next_events(socket, len(expected))
    assert int(event["id"]) in written
    assert int(event["id"]) > history[-1]
    assert event["container"]["id"] == "c2"
    assert ids(rest) == expected


async def test_after_replays_then_goes_live_with_no_gap_and_no_duplicate(server: Server):
    async with httpx.AsyncClient(base_url=server.base) as http:
        history = await post_events(http, server.acme_key, [access() for _ in range(30)])
        after = history[9]
        writing_done = asyncio.Event()
        written: list[int] = list(history)

        async def write_meanwhile() -> None:
            for round_ in range(20):
                batch = [access(f"c{round_ % 3}") for _ in range(round_ % 4 + 1)]
                written.extend(await post_events(http, server.acme_key, batch))
                # Another org's events never reach acme's subscribers.
                await post_events(http, server.other_key, [access()], org_id="other")
            writing_done.set()

        async with acknowledged(server, server.acme_key) as socket:
            await subscribe(socket, "1", after=event_cursor(after))
            writer = asyncio.create_task(write_meanwhile())
            first = await next_events(socket, 5)  # replay under way while writes land
            await writer
            expected = [event_id for event_id in written if event_id > after]
            received = first + await next_events(socket, len(expected) - len(first))
            await socket.send(json.dumps({"id": "1", "type": "complete"}))

    assert ids(received) == expected
    assert ids(received) == sorted(set(ids(received)))


async def test_filter_and_container_id_select_as_queries_do(server: Server):
    async with httpx.AsyncClient(base_url=server.base) as http:
        start = (await post_events(http, server.acme_key, [access()]))[0]
        batch = [
            access("c1", status="FAILURE"),
            access("c2", status="FAILURE"),
            {"container_id": "c1", "event_type": "BLOCK"},
            {"container_id": "c1", "event_type": "UPDATE", "status": "FAILURE"},
            access("c1"),
        ]
        written = await post_events(http, server.acme_key, batch)
        async with acknowledged(server, server.acme_key) as socket:
            await subscribe(socket, "failed", filter="FAIL", after=event_cursor(start))
            after_batch = event_cursor(written[-1])
            await subscribe(
                socket, "c1-access", containerId="c1", filter="ACCESS", after=after_batch
            )
            await subscribe(socket, "blocks", filter="BLOCK", after=event_cursor(start))
            await asyncio.sleep(0.3)
            live = await post_events(http, server.acme_key, [access("c1"), access("c2")])
            by_operation: dict[str, list[int]] = {"failed": [], "c1-access": [], "blocks": []}
            while sum(map(len, by_operation.values())) < 3 + 1 + 1:
                message = await _receive(socket)
                assert message["type"] == "next", message
                by_operation[message["id"]].append(
                    int(message["payload"]["data"]["containerEvents"]["id"])
                )
            with pytest.raises(TimeoutError):  # and nothing else
                await asyncio.wait_for(socket.recv(), 0.5)

    assert by_operation == {
        "failed": [written[0], written[1], written[3]],
        "c1-access": [live[0]],
        "blocks": [written[2]],
    }


# Every event a compiled plan builds is sent straight from the source stream (LIVE_SINK):
# the frames must be those graphql-core's execution and Strawberry's per-result hooks send.
FRAME_OPERATIONS = {
    "shipped": (SUBSCRIPTION, {}),
    "failed in c1": (SUBSCRIPTION, {"filter": "FAIL", "containerId": "c1"}),
    "shape": (
        "subscription S($orgId: ID!, $after: String, $show: Boolean!) {"
        " live: containerEvents(orgId: $orgId, after: $after) { __typename ...F"
        " ts: timestamp details container @include(if: $show) { __typename id lastEventAt } }"
        " } fragment F on Event { id cursor keyId status eventType }",
        {"show": True},
    ),
    "left to graphql-core": (  # Container.events has no plan: every event takes its path
        "subscription S($orgId: ID!, $after: String) { containerEvents(orgId: $orgId,"
        " after: $after) { id actor container { events(first: 1) { nodes { id } } } } }",
        {},
    ),
}


async def _frames(
    server: Server, after: str, count: int, subscribed: asyncio.Event
) -> dict[str, list[str]]:
    """The raw `next` frames of each FRAME_OPERATIONS operation, `count` events each at most."""
    expected = {
        "shipped": count,
        "failed in c1": count // 4,
        "shape": count,
        "left to graphql-core": count,
    }
    frames: dict[str, list[str]] = {name: [] for name in FRAME_OPERATIONS}
    async with acknowledged(server, server.acme_key) as socket:
        for name, (query, extra) in FRAME_OPERATIONS.items():
            variables = {"orgId": "acme", "after": after, **extra}
            payload = {"query": query, "variables": variables}
            await socket.send(json.dumps({"id": name, "type": "subscribe", "payload": payload}))
        subscribed.set()
        while any(len(frames[name]) < wanted for name, wanted in expected.items()):
            frame = await asyncio.wait_for(socket.recv(), RECEIVE_TIMEOUT)
            assert isinstance(frame, str)
            message = json.loads(frame)
            if message["type"] == "ping":
                await socket.send(json.dumps({"type": "pong"}))
                continue
            assert message["type"] == "next", message
            frames[message["id"]].append(frame)
    return frames


def _varied(numbers: range) -> list[dict[str, Any]]:
    return [
        access(
            f"c{number % 4}",
            status="FAILURE" if number % 2 else "SUCCESS",
            details={"n": number, "note": 'ünï "q"', "at": [1.5, None]},
            **({"actor": f"user{number}@example.com"} if number % 3 else {}),
        )
        for number in numbers
    ]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_frames_sent_from_plans_are_those_graphql_core_sends(backend, tmp_path):
    url = _database_url(backend, tmp_path)
    acme_key, other_key = await _start(url)
    with _serving(url, 10_000) as compiled, _serving(url, 10_000, compiled=False) as reference:
        servers = [Server(base, acme_key, other_key) for base in (compiled, reference)]
        async with httpx.AsyncClient(base_url=compiled) as http:
            start = (await post_events(http, acme_key, [access()]))[0]
            await post_events(http, acme_key, _varied(range(8)))  # to be replayed
            subscribed = [asyncio.Event() for _ in servers]
            receiving = [
                asyncio.create_task(_frames(server, event_cursor(start), 16, ready))
                for server, ready in zip(servers, subscribed, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in subscribed)), 10)
            await asyncio.sleep(0.3)
            await post_events(http, acme_key, _varied(range(8, 16)))  # live, from the tail
            received = await asyncio.gather(*receiving)
    assert received[0] == received[1]
    assert [len(frames) for frames in received[0].values()] == [16, 4, 16, 16]


@pytest.fixture(params=["sqlite", "postgresql"])
def impatient_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server whose subscribers may fall at most 5 events behind."""
    with server_with(_database_url(request.param, tmp_path), max_lag=5) as running:
        yield running


async def test_events_written_through_one_process_reach_a_subscriber_of_another(tmp_path):
    url = _database_url("postgresql", tmp_path)
    acme_key, other_key = await _start(url)
    # Without their periodic re-read, only the commit notices can carry events across.
    no_polling = 3600.0
    with (
        _serving(url, 10_000, no_polling) as subscribed_base,
        _serving(url, 10_000, no_polling) as written_base,
    ):
        subscribed = Server(subscribed_base, acme_key, other_key)
        async with httpx.AsyncClient(base_url=written_base) as http:
            [start] = await post_events(http, acme_key, [access()])
            written: list[int] = []
            received: list[dict[str, Any]] = []
            async with acknowledged(subscribed, acme_key) as socket:
                await subscribe(socket, "1", after=event_cursor(start))
                for size in (1, 3, 5):
                    batch = await post_events(http, acme_key, [access() for _ in range(size)])
                    written += batch
                    received += await next_events(socket, size)

    assert ids(received) == written


async def test_a_subscriber_too_far_behind_is_ended_with_the_cursor_to_resume(
    impatient_server: Server,
):
    server = impatient_server
    async with httpx.AsyncClient(base_url=server.base) as http:
        start = (await post_events(http, server.acme_key, [access()]))[0]
        async with acknowledged(server, server.acme_key) as socket:
            await subscribe(socket, "1", after=event_cursor(start))
            await asyncio.sleep(0.3)
            # Within the limit: delivered.
            kept = await post_events(http, server.acme_key, [access() for _ in range(5)])
            assert ids(await next_events(socket, 5)) == kept
            # More committed at once than the subscriber may lag behind.
            await post_events(http, server.acme_key, [access() for _ in range(6)])
            message = await _receive(socket)
            assert message["type"] == "next", message
            [error] = message["payload"]["errors"]
            assert (await _receive(socket))["type"] == "complete"

        assert error["extensions"]["code"] == "SUBSCRIBER_TOO_SLOW"
        assert error["extensions"]["after"] == event_cursor(kept[-1])
        async with acknowledged(server, server.acme_key) as socket:
            await subscribe(socket, "2", after=error["extensions"]["after"])
            resumed = await next_events(socket, 6)
    assert ids(resumed) == [kept[-1] + n for n in range(1, 7)]
