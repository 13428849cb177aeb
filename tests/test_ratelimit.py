"""Per-key rate limits: off by default; REST by request, GraphQL by cost; shared via Redis."""

import socket
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.config import Settings
from gateway.ratelimit import GRAPHQL_WEIGHT_PER_UNIT, graphql_cost, open_storage
from storage.database import Database
from storage.keys import create_key
from tests.factories import auth, count_events
from tests.rest_assertions import assert_problem

REDIS_URL = "redis://127.0.0.1:6379"
NEW_EVENT = {"event_type": "ACCESS", "timestamp": "2023-11-18T12:00:00Z"}
POST_EVENT = "/orgs/acme/containers/c1/events"
CHEAP = '{ org(id: "acme") { name } }'
EIGHT_FIELDS = "id eventType status timestamp receivedAt actor details container { id }"
COSTLY = f'{{ org(id: "acme") {{ events(first: 1000) {{ nodes {{ {EIGHT_FIELDS} }} }} }} }}'
RATE_LIMIT_FIELDS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def limited_app(db: Database, rate: str, **settings: str) -> Starlette:
    return create_app(
        Settings(database_url=db.url, key_cache_seconds=0, rate_limit=rate, **settings), db=db
    )


@asynccontextmanager
async def client_of(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def limited(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the gateway with a budget of 3 requests per minute per key."""
    async with client_of(limited_app(db, "3/minute")) as client:
        yield client


async def another_key(db: Database, org_id: str) -> str:
    async with db.session() as session:
        _row, secret = await create_key(session, org_id=org_id)
    return secret


async def post_event(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post(POST_EVENT, json=NEW_EVENT, headers=auth(key))


async def graphql(client: httpx.AsyncClient, key: str, query: str) -> httpx.Response:
    return await client.post("/graphql", json={"query": query}, headers=auth(key))


def remaining(response: httpx.Response) -> int:
    return int(response.headers["RateLimit-Remaining"])


async def test_rate_limits_are_off_by_default(client, db, acme_key):
    answers = [await client.get("/orgs/acme/events", headers=auth(acme_key)) for _ in range(40)]
    answers += [await graphql(client, acme_key, COSTLY) for _ in range(5)]

    assert {answer.status_code for answer in answers} == {200}
    assert not any(field in answer.headers for answer in answers for field in RATE_LIMIT_FIELDS)


async def test_every_answer_within_the_limit_carries_the_rate_limit_fields(limited, acme_key):
    answers = [
        await limited.get("/orgs/acme/events", headers=auth(acme_key)),
        await limited.get("/orgs/acme/no_such_path", headers=auth(acme_key)),
        await post_event(limited, acme_key),
    ]

    assert [answer.status_code for answer in answers] == [200, 404, 200]
    assert [remaining(answer) for answer in answers] == [2, 1, 0]
    for answer in answers:
        assert answer.headers["RateLimit-Limit"] == "3"
        assert 0 < int(answer.headers["RateLimit-Reset"]) <= 60
        assert answer.headers["RateLimit-Policy"] == "3;w=60"
        assert "Retry-After" not in answer.headers


async def test_a_rest_request_over_the_limit_is_429_and_the_write_stores_nothing(
    limited, db, acme_key
):
    for _ in range(3):
        assert (await post_event(limited, acme_key)).status_code == 200

    refused = await post_event(limited, acme_key)

    body = assert_problem(refused, 429)
    assert "rate limit" in body["detail"].lower()
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Limit"] == "3"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert await count_events(db) == 3
    assert (await limited.get("/orgs/acme/events", headers=auth(acme_key))).status_code == 429


async def test_each_key_has_its_own_budget(limited, db, acme_key, other_key):
    second_acme_key = await another_key(db, "acme")
    for _ in range(3):
        await post_event(limited, acme_key)
    assert (await post_event(limited, acme_key)).status_code == 429

    same_org = await post_event(limited, second_acme_key)
    other_org = await limited.get("/orgs/other/events", headers=auth(other_key))

    assert (same_org.status_code, remaining(same_org)) == (200, 2)
    assert (other_org.status_code, remaining(other_org)) == (200, 2)


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Basic YWNtZTpzZWNyZXQ="}], ids=["no-key", "no-bearer"]
)
async def test_a_request_without_a_key_answers_401_not_429(limited, acme_key, headers):
    answers = [await limited.get("/orgs/acme/events", headers=headers) for _ in range(6)]
    answers += [await limited.post("/graphql", json={"query": CHEAP}, headers=headers)]

    assert {answer.status_code for answer in answers} == {401}
    assert not any("RateLimit-Limit" in answer.headers for answer in answers)


async def test_graphql_over_the_limit_is_429_rate_limited(limited, acme_key):
    answers = [await graphql(limited, acme_key, CHEAP) for _ in range(3)]
    assert [answer.json() for answer in answers] == [{"data": {"org": {"name": "acme"}}}] * 3

    refused = await graphql(limited, acme_key, CHEAP)

    assert refused.status_code == 429
    body = refused.json()
    assert body["data"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    retry_after = error["extensions"]["retryAfter"]
    assert 1 <= retry_after <= 60
    assert refused.headers["Retry-After"] == str(retry_after)
    assert refused.headers["RateLimit-Remaining"] == "0"


async def test_a_refused_graphql_mutation_stores_nothing(limited, db, acme_key):
    mutation = """mutation { logContainerEvent(orgId: "acme", containerId: "c1",
        event: {eventType: ACCESS}) { event { id } } }"""
    answers = [await graphql(limited, acme_key, mutation) for _ in range(4)]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert await count_events(db) == 3


async def test_one_costly_graphql_query_spends_what_many_cheap_ones_do(db, acme_key):
    cheap_key = await another_key(db, "acme")
    async with client_of(limited_app(db, "40/minute")) as client:
        cheap = [await graphql(client, cheap_key, CHEAP) for _ in range(40)]
        costly = await graphql(client, acme_key, COSTLY)
        left = remaining(costly)
        after_costly = [await graphql(client, acme_key, CHEAP) for _ in range(left + 1)]
        after_cheap = await graphql(client, cheap_key, CHEAP)

    assert [remaining(answer) for answer in cheap] == list(range(39, -1, -1))
    assert costly.status_code == 200
    assert "errors" not in costly.json()
    # events(first: 1000) with 8 fields spends what more than ten cheap queries do.
    assert 0 < left < 40 - 10
    assert [answer.status_code for answer in after_costly] == [200] * left + [429]
    assert after_cheap.status_code == 429


async def test_a_graphql_get_is_weighed_like_a_post(db, acme_key):
    async with client_of(limited_app(db, "40/minute")) as client:
        cheap = await client.get("/graphql", params={"query": CHEAP}, headers=auth(acme_key))
        costly = await client.get("/graphql", params={"query": COSTLY}, headers=auth(acme_key))

    assert (cheap.status_code, remaining(cheap)) == (200, 39)
    assert costly.status_code == 200
    assert "errors" not in costly.json()
    assert remaining(cheap) - remaining(costly) > 10


async def test_a_query_costing_more_than_the_budget_runs_once_then_waits(db, acme_key):
    async with client_of(limited_app(db, "5/minute")) as client:
        costly = await graphql(client, acme_key, COSTLY)
        then = await graphql(client, acme_key, CHEAP)

    assert (costly.status_code, remaining(costly)) == (200, 0)
    assert then.status_code == 429


async def test_a_document_that_does_not_parse_costs_one_and_is_answered_by_graphql(
    limited, acme_key
):
    answer = await graphql(limited, acme_key, "{ org(id: ")

    assert answer.status_code == 200
    assert answer.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    assert remaining(answer) == 2


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("RATE_LIMIT", "lots", "600/minute"),
        ("RATE_LIMIT", "10/minute;100/hour", "single rate"),
        ("RATE_LIMIT_STORAGE", "postgresql://127.0.0.1/limits", "redis://host:port"),
        ("RATE_LIMIT_STORAGE", "127.0.0.1:6379", "redis://host:port"),
    ],
)
def test_bad_rate_limit_settings_stop_the_start_with_a_clear_message(
    monkeypatch, variable, value, says
):
    monkeypatch.setenv("EVENTS_GATEWAY_" + variable, value)

    with pytest.raises(SystemExit) as stopped:
        Settings.from_env()

    message = str(stopped.value)
    assert f"EVENTS_GATEWAY_{variable}" in message and value in message and says in message


def test_a_bad_rate_given_directly_fails_when_the_app_is_built():
    with pytest.raises(ValueError, match="600/minute"):
        create_app(Settings(rate_limit="often"))


def test_rate_limit_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("EVENTS_GATEWAY_RATE_LIMIT", "600/minute")
    monkeypatch.setenv("EVENTS_GATEWAY_RATE_LIMIT_STORAGE", REDIS_URL)

    settings = Settings.from_env()

    assert (settings.rate_limit, settings.rate_limit_storage) == ("600/minute", REDIS_URL)
    assert (Settings().rate_limit, Settings().rate_limit_storage) == ("", "memory://")


def redis_is_reachable() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test run's own in Redis, whose keys are deleted afterwards."""
    if not redis_is_reachable():
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    prefix = f"events-gateway-test-{uuid.uuid4().hex}"
    yield prefix
    storage = open_storage(REDIS_URL, key_prefix=prefix)
    await storage.reset()
    assert await storage.reset() == 0


async def test_two_app_instances_share_a_budget_in_redis(db, acme_key, redis_prefix):
    def app() -> Starlette:
        return limited_app(
            db, "3/minute", rate_limit_storage=REDIS_URL, rate_limit_key_prefix=redis_prefix
        )

    async with client_of(app()) as first, client_of(app()) as second:
        answers = [
            await post_event(first, acme_key),
            await post_event(second, acme_key),
            await post_event(first, acme_key),
            await post_event(second, acme_key),
            await first.get("/orgs/acme/events", headers=auth(acme_key)),
        ]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429, 429]
    assert [remaining(answer) for answer in answers] == [2, 1, 0, 0, 0]
    assert await count_events(db) == 3


async def test_an_unreachable_redis_leaves_requests_unlimited_and_says_so(db, acme_key, caplog):
    app = limited_app(db, "1/minute", rate_limit_storage="redis://127.0.0.1:1")
    async with client_of(app) as client:
        answers = [await client.get("/orgs/acme/events", headers=auth(acme_key)) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [200] * 3
    assert not any("RateLimit-Limit" in answer.headers for answer in answers)
    assert "rate limit storage failed" in caplog.text
    assert acme_key not in caplog.text


def test_nested_fragments_are_weighed_once_each_not_once_per_path():
    # Each fragment spreads the next twice: weighed per path, 40 levels would take 2^40 steps.
    levels = 40
    fragments = " ".join(
        f"fragment F{n} on Organization {{ ...F{n + 1} ...F{n + 1} }}" for n in range(levels)
    )
    query = (
        f'{{ org(id: "acme") {{ ...F0 }} }} {fragments} fragment F{levels} on Organization {{ id }}'
    )
    body = orjson.dumps({"query": query})
    weighed: list[int] = []

    worker = threading.Thread(
        target=lambda: weighed.append(graphql_cost(body, b"", max_tokens=100_000)), daemon=True
    )
    worker.start()
    worker.join(10)

    assert weighed, "weighing the document did not finish"
    # Still what it asks for: 2^40 ids, far over any budget.
    assert weighed[0] > 2**40 // GRAPHQL_WEIGHT_PER_UNIT
