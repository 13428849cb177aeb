"""REST shim, reading: the five filters, windows, order, limits, cursors and the Link header."""

import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Row

from storage.database import Database
from tests.factories import BASE_TIME, auth, make_events
from tests.rest_assertions import assert_problem

LINK_NEXT = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')

# Every type and status in two containers, so each filter has something to leave out.
MIXED_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("c1", {"event_type": "ACCESS"}),
    ("c1", {"event_type": "ACCESS", "status": "FAILURE"}),
    ("c2", {"event_type": "BLOCK"}),
    ("c1", {"event_type": "CREATE"}),
    ("c2", {"event_type": "EXPIRE"}),
    ("c1", {"event_type": "UPDATE", "status": "FAILURE"}),
    ("c2", {"event_type": "DELETE"}),
    ("c2", {"event_type": "ACCESS"}),
    ("c2", {"event_type": "CREATE", "status": "FAILURE"}),
    ("c1", {"event_type": "EXPIRE"}),
    ("c1", {"event_type": "BLOCK", "status": "FAILURE"}),
]

SELECTS = {
    "by_access": lambda row: row["event_type"] == "ACCESS",
    "by_block": lambda row: row["event_type"] == "BLOCK",
    "by_create": lambda row: row["event_type"] == "CREATE",
    "by_expire": lambda row: row["event_type"] == "EXPIRE",
    "by_fail": lambda row: row["status"] == "FAILURE",
}


async def make_mixed(db: Database) -> list[Row]:
    """MIXED_EVENTS in acme, and the same again in org `other` that acme must never see."""
    rows = await make_events(db, "acme", MIXED_EVENTS)
    await make_events(db, "other", MIXED_EVENTS)
    return rows


def newest_first(rows: list[Row]) -> list[int]:
    return sorted((row["id"] for row in rows), reverse=True)


async def listed_ids(
    client: httpx.AsyncClient, key: str, path: str, **params: str | int
) -> list[int]:
    answer = await client.get(path, params=params, headers=auth(key))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    return [event["id"] for event in answer.json()["events"]]


def next_link(answer: httpx.Response) -> str | None:
    link = answer.headers.get("link")
    if link is None:
        return None
    match = LINK_NEXT.match(link)
    assert match, link
    return match["url"]


@pytest.mark.parametrize("filter_path", sorted(SELECTS))
async def test_filter_route_lists_exactly_its_events_newest_first(
    client, db, acme_key, other_key, filter_path
):
    rows = await make_mixed(db)
    expected = newest_first([row for row in rows if SELECTS[filter_path](row)])
    assert expected, "the fixture must give every filter something to find"

    found = await listed_ids(client, acme_key, f"/orgs/acme/container_events/{filter_path}")

    assert found == expected


async def test_by_fail_lists_only_failed_events_of_every_type(client, db, acme_key, other_key):
    rows = await make_mixed(db)

    answer = await client.get("/orgs/acme/container_events/by_fail", headers=auth(acme_key))

    events = answer.json()["events"]
    assert {event["status"] for event in events} == {"FAILURE"}
    assert {event["event_type"] for event in events} == {"ACCESS", "UPDATE", "CREATE", "BLOCK"}
    assert len(events) == sum(row["status"] == "FAILURE" for row in rows)


async def test_org_events_lists_every_event_of_the_org_and_no_other(
    client, db, acme_key, other_key
):
    rows = await make_mixed(db)

    answer = await client.get("/orgs/acme/events", headers=auth(acme_key))

    assert [event["id"] for event in answer.json()["events"]] == newest_first(rows)
    assert {event["org_id"] for event in answer.json()["events"]} == {"acme"}
    assert answer.json()["next_cursor"] is None


async def test_container_events_lists_only_that_containers_events(client, db, acme_key, other_key):
    rows = await make_mixed(db)

    found = await listed_ids(client, acme_key, "/orgs/acme/containers/c2/events")

    assert found == newest_first([row for row in rows if row["container_id"] == "c2"])


@pytest.mark.parametrize("path", ["/orgs/acme/events", "/orgs/acme/container_events/by_fail"])
async def test_container_id_query_narrows_org_lists_to_one_container(
    client, db, acme_key, other_key, path
):
    rows = await make_mixed(db)
    container_of = {row["id"]: row["container_id"] for row in rows}
    everything = await listed_ids(client, acme_key, path)

    found = await listed_ids(client, acme_key, path, container_id="c1")

    expected = [event_id for event_id in everything if container_of[event_id] == "c1"]
    assert found == expected and 0 < len(found) < len(everything)


async def test_container_id_query_for_an_unknown_container_lists_nothing(client, db, acme_key):
    await make_events(db, "acme", MIXED_EVENTS)

    assert await listed_ids(client, acme_key, "/orgs/acme/events", container_id="nope") == []


async def test_since_is_inclusive_and_until_exclusive(client, db, acme_key):
    rows = await make_events(db, "acme", [("c1", {})] * 8)
    since, until = BASE_TIME + timedelta(minutes=2), BASE_TIME + timedelta(minutes=5)

    found = await listed_ids(
        client,
        acme_key,
        "/orgs/acme/events",
        since=since.isoformat(),
        until=until.isoformat(),
        order="asc",
    )

    assert found == [rows[2]["id"], rows[3]["id"], rows[4]["id"]]


async def test_since_and_until_compare_instants_whatever_the_offset(client, db, acme_key):
    rows = await make_events(db, "acme", [("c1", {})] * 4)

    # 13:02+01:00 is BASE_TIME + 2 minutes (12:02Z).
    found = await listed_ids(
        client, acme_key, "/orgs/acme/events", since="2023-11-18T13:02:00+01:00", order="asc"
    )

    assert found == [rows[2]["id"], rows[3]["id"]]


@pytest.mark.parametrize("path", ["/orgs/acme/container_events/by_access", "/orgs/acme/events"])
async def test_time_window_applies_to_filtered_and_unfiltered_lists(client, db, acme_key, path):
    rows = await make_events(db, "acme", [("c1", {})] * 6)

    found = await listed_ids(
        client, acme_key, path, until=(BASE_TIME + timedelta(minutes=3)).isoformat()
    )

    assert found == newest_first(rows[:3])


async def test_order_asc_lists_oldest_first_and_desc_is_the_default(client, db, acme_key):
    rows = await make_events(db, "acme", [("c1", {})] * 5)
    ids = [row["id"] for row in rows]

    assert await listed_ids(client, acme_key, "/orgs/acme/events", order="asc") == ids
    assert await listed_ids(client, acme_key, "/orgs/acme/events", order="desc") == ids[::-1]
    assert await listed_ids(client, acme_key, "/orgs/acme/events", order="ASC") == ids
    assert await listed_ids(client, acme_key, "/orgs/acme/events") == ids[::-1]


async def test_limit_caps_the_page_and_the_link_header_leads_to_the_next_page(client, db, acme_key):
    rows = await make_events(db, "acme", [("c1", {})] * 5)
    ids = newest_first(rows)

    first = await client.get("/orgs/acme/events", params={"limit": 2}, headers=auth(acme_key))
    assert [event["id"] for event in first.json()["events"]] == ids[:2]
    assert first.json()["next_cursor"] is not None
    url = next_link(first)
    assert url is not None
    assert httpx.URL(url).params["cursor"] == first.json()["next_cursor"]

    second = await client.get(url, headers=auth(acme_key))
    assert [event["id"] for event in second.json()["events"]] == ids[2:4]

    last = await client.get(next_link(second), headers=auth(acme_key))
    assert [event["id"] for event in last.json()["events"]] == ids[4:]
    assert last.json()["next_cursor"] is None
    assert "link" not in last.headers


async def test_link_header_keeps_the_filter_and_every_other_parameter(client, db, acme_key):
    specs = [(f"c{i % 2 + 1}", {"status": "FAILURE" if i % 3 else "SUCCESS"}) for i in range(12)]
    rows = await make_events(db, "acme", specs)
    params = {"limit": 1, "order": "asc", "container_id": "c1"}
    path = "/orgs/acme/container_events/by_fail"

    seen: list[int] = []
    answer = await client.get(path, params=params, headers=auth(acme_key))
    while True:
        seen += [event["id"] for event in answer.json()["events"]]
        url = next_link(answer)
        if url is None:
            break
        answer = await client.get(url, headers=auth(acme_key))

    assert seen == [
        row["id"] for row in rows if row["status"] == "FAILURE" and row["container_id"] == "c1"
    ]


async def test_a_page_that_ends_the_list_exactly_has_no_next_cursor_or_link(client, db, acme_key):
    await make_events(db, "acme", [("c1", {})] * 3)

    answer = await client.get("/orgs/acme/events", params={"limit": 3}, headers=auth(acme_key))

    assert len(answer.json()["events"]) == 3
    assert answer.json()["next_cursor"] is None
    assert "link" not in answer.headers


async def test_default_page_holds_100_events_and_limit_1000_is_allowed(client, db, acme_key):
    await make_events(db, "acme", [("c1", {})] * 101)

    default = await client.get("/orgs/acme/events", headers=auth(acme_key))
    largest = await client.get("/orgs/acme/events", params={"limit": 1000}, headers=auth(acme_key))

    assert len(default.json()["events"]) == 100 and default.json()["next_cursor"]
    assert len(largest.json()["events"]) == 101 and largest.json()["next_cursor"] is None


async def test_events_show_the_documented_json_shape(client, db, acme_key):
    await make_events(
        db,
        "acme",
        [("c1", {"event_type": "BLOCK", "status": "FAILURE", "actor": "alice", "details": {}})],
    )

    [event] = (await client.get("/orgs/acme/events", headers=auth(acme_key))).json()["events"]

    assert set(event) == {
        "id",
        "org_id",
        "container_id",
        "event_type",
        "status",
        "timestamp",
        "received_at",
        "actor",
        "details",
        "key_id",
    }
    assert isinstance(event["id"], int)
    assert event["key_id"] is None  # stored without a key, as the command line does
    assert event["org_id"] == "acme" and event["container_id"] == "c1"
    assert (event["event_type"], event["status"]) == ("BLOCK", "FAILURE")
    assert event["timestamp"] == "2023-11-18T12:00:00Z"
    assert event["received_at"].endswith("Z")
    assert (event["actor"], event["details"]) == ("alice", {})


async def test_an_empty_org_lists_no_events(client, acme_key):
    answer = await client.get("/orgs/acme/events", headers=auth(acme_key))

    assert answer.json() == {"events": [], "next_cursor": None}
    assert "link" not in answer.headers


async def test_events_of_an_unknown_container_answer_404(client, db, acme_key):
    await make_events(db, "acme", [("c1", {})])

    answer = await client.get("/orgs/acme/containers/nope/events", headers=auth(acme_key))

    assert_problem(answer, 404)


async def walk(
    client: httpx.AsyncClient, key: str, path: str, params: dict[str, str | int], between_pages
) -> list[int]:
    """Follow next_cursor to the end, calling `between_pages(page_number)` after each page."""
    seen: list[int] = []
    cursor: str | None = None
    page_number = 0
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        answer = await client.get(path, params=query, headers=auth(key))
        assert answer.status_code == 200, answer.text
        seen += [event["id"] for event in answer.json()["events"]]
        cursor = answer.json()["next_cursor"]
        if cursor is None:
            return seen
        await between_pages(page_number)
        page_number += 1


@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize("path", ["/orgs/acme/events", "/orgs/acme/container_events/by_fail"])
async def test_cursor_walk_never_skips_or_repeats_while_events_arrive(
    client, db, acme_key, order, path
):
    seeded = await make_events(
        db, "acme", [("c1", {"status": "FAILURE" if i % 2 else "SUCCESS"}) for i in range(10)]
    )
    posted: list[dict[str, Any]] = []

    async def post_two_events(page_number: int) -> None:
        if page_number >= 3:
            return
        for status in ("FAILURE", "SUCCESS"):
            answer = await client.post(
                "/orgs/acme/containers/c1/events",
                json={"event_type": "ACCESS", "status": status},
                headers=auth(acme_key),
            )
            assert answer.status_code == 200, answer.text
            posted.append(answer.json()["event"])

    seen = await walk(client, acme_key, path, {"limit": 2, "order": order}, post_two_events)

    wanted = "FAILURE" if path.endswith("by_fail") else None
    before = [row["id"] for row in seeded if wanted in (None, row["status"])]
    during = [event["id"] for event in posted if wanted in (None, event["status"])]
    assert len(seen) == len(set(seen)), "an event was repeated"
    if order == "desc":
        # Newer events sit above where the walk started, so it finishes the list it began.
        assert seen == before[::-1]
    else:
        # Oldest first, events that arrive during the walk join its end, in order.
        assert seen == before + during
