"""The gateway's own URLs in answers: never built from the client's Host header."""

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.urls import InvalidPublicURL
from storage.database import Database
from tests.factories import auth, make_events

EVIL_HOST = "evil.example"


async def serve(db: Database, **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(database_url=db.url, key_cache_seconds=0, **settings), db=db)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def public_client(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    async for client in serve(db, public_url="https://events.example.com/"):
        yield client


async def two_events(db: Database) -> None:
    await make_events(db, "acme", [("vault-1", {}), ("vault-1", {})])


async def test_the_next_link_is_relative_and_ignores_the_host_header(client, db, acme_key):
    await two_events(db)

    answer = await client.get(
        "/orgs/acme/events", params={"limit": 1}, headers={**auth(acme_key), "Host": EVIL_HOST}
    )

    assert answer.status_code == 200, answer.text
    link = answer.headers["link"]
    assert EVIL_HOST not in link
    cursor = answer.json()["next_cursor"]
    assert link == f'</orgs/acme/events?limit=1&cursor={cursor}>; rel="next"'
    # A client resolves it against the URL it asked, and gets the next page.
    following = await client.get(link[1 : link.index(">")], headers=auth(acme_key))
    assert following.status_code == 200
    assert len(following.json()["events"]) == 1


async def test_with_a_public_url_the_next_link_is_absolute_on_it(public_client, db, acme_key):
    await two_events(db)

    answer = await public_client.get(
        "/orgs/acme/events", params={"limit": 1}, headers={**auth(acme_key), "Host": EVIL_HOST}
    )

    cursor = answer.json()["next_cursor"]
    expected = f'<https://events.example.com/orgs/acme/events?limit=1&cursor={cursor}>; rel="next"'
    assert answer.headers["link"] == expected


async def test_a_trailing_slash_redirect_ignores_the_host_header(client, acme_key):
    answer = await client.get(
        "/orgs/acme/events/?limit=2", headers={**auth(acme_key), "Host": EVIL_HOST}
    )

    assert answer.status_code == 307
    assert answer.headers["location"] == "/orgs/acme/events?limit=2"


async def test_with_a_public_url_a_redirect_is_absolute_on_it(public_client, acme_key):
    answer = await public_client.get("/orgs/acme/events/", headers={"Host": EVIL_HOST})

    assert answer.status_code == 307
    assert answer.headers["location"] == "https://events.example.com/orgs/acme/events"


async def test_a_path_no_route_takes_either_way_is_still_a_problem_404(client):
    answer = await client.get("/no/such/path/", headers={"Host": EVIL_HOST})

    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert EVIL_HOST not in answer.text


@pytest.mark.parametrize(
    "given", ["events.example.com", "ftp://events.example.com", "https://", "https://x/?a=1"]
)
def test_a_public_url_that_is_not_an_http_url_stops_the_start(given, monkeypatch):
    monkeypatch.setenv("EVENTS_GATEWAY_PUBLIC_URL", given)

    with pytest.raises(SystemExit, match="EVENTS_GATEWAY_PUBLIC_URL must be an http"):
        Settings.from_env()
    with pytest.raises(InvalidPublicURL):
        create_app(Settings(public_url=given))
