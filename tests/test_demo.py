"""The demo's event generator, its printed instructions and its set-up (SQLite only)."""

import json
import random
import shlex
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.demo import (
    CONTAINERS,
    DEMO_ORG_ID,
    SERVICES,
    _base_url,
    generate_events,
    prepare_demo,
    usage_text,
)
from storage.database import Database
from storage.domain import EventStatus, EventType
from storage.events import Page, list_events
from storage.keys import hash_key, holder_of_key

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def test_generated_events_are_a_realistic_mix() -> None:
    items = generate_events(5000, now=NOW, rng=random.Random(7))
    events = [event for _, event in items]
    kinds = Counter((event.event_type, event.status) for event in events)
    failures = sum(1 for event in events if event.status is EventStatus.FAILURE)

    assert len(items) == 5000
    assert kinds[EventType.ACCESS, EventStatus.SUCCESS] > 0.55 * 5000
    assert 0.07 * 5000 < failures < 0.13 * 5000
    assert kinds[EventType.ACCESS, EventStatus.FAILURE] > 0
    assert {event.event_type for event in events} == set(EventType)
    assert 20 <= len({container for container, _ in items}) <= len(CONTAINERS)
    assert any(event.actor and event.actor.endswith("@demo.example") for event in events)
    assert any(event.actor in SERVICES for event in events)
    assert all(event.details for event in events)
    assert all("reason" in event.details for event in events if event.status is EventStatus.FAILURE)


def test_generated_events_span_the_last_week_oldest_first() -> None:
    timestamps = [
        event.timestamp for _, event in generate_events(500, now=NOW, rng=random.Random(1))
    ]

    assert timestamps == sorted(timestamps)
    assert NOW - timedelta(days=7) <= timestamps[0] < NOW - timedelta(days=6)
    assert NOW - timedelta(days=1) < timestamps[-1] <= NOW


def test_usage_text_has_a_curl_line_for_every_rest_route() -> None:
    text = usage_text(
        base_url="http://127.0.0.1:8000", key="egw_secret", container_id="bucket-logs"
    )
    curls = [shlex.split(line) for line in text.splitlines() if line.strip().startswith("curl ")]
    urls = [words[-1].partition("?")[0] for words in curls]
    org = "http://127.0.0.1:8000/orgs/demo"

    assert urls == [
        f"{org}/events",
        *(
            f"{org}/container_events/by_{name}"
            for name in ("access", "block", "create", "expire", "fail")
        ),
        f"{org}/containers/bucket-logs/events",
        f"{org}/containers/bucket-logs/events",
    ]
    assert all("Authorization: Bearer egw_secret" in words for words in curls)
    assert curls[-1][:3] == ["curl", "-X", "POST"]
    assert "http://127.0.0.1:8000/graphql" in text
    assert {"Authorization": "Bearer egw_secret"} in [
        json.loads(line) for line in text.splitlines() if line.strip().startswith("{")
    ]


def test_base_url_reaches_a_wildcard_bind_through_loopback() -> None:
    assert _base_url("0.0.0.0", 9000) == "http://127.0.0.1:9000"
    assert _base_url("::1", 9000) == "http://[::1]:9000"
    assert _base_url("localhost", 9000) == "http://localhost:9000"


async def test_rerunning_the_demo_keeps_its_events_and_makes_a_fresh_key(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}")
    try:
        first_key, container_id = await prepare_demo(db, event_count=120)
        second_key, _ = await prepare_demo(db, event_count=120)
        async with db.reader() as reader:
            stored = await list_events(reader, org_id=DEMO_ORG_ID, page=Page(limit=1000))
            holders = [
                await holder_of_key(reader, key_hash=hash_key(key))
                for key in (first_key, second_key)
            ]
            owners = {holder.org_id for holder in holders if holder is not None}
    finally:
        await db.dispose()

    assert first_key != second_key
    assert owners == {DEMO_ORG_ID}
    assert len(stored.rows) == 120
    assert container_id == stored.rows[0]["container_id"]
