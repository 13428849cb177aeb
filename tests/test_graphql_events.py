"""Reading events over GraphQL: filters, Relay paging, windows, containers, the dataloader."""

from datetime import datetime, timedelta
from itertools import product
from typing import Any

import httpx
import pytest

from storage.database import Database
from storage.domain import EventFilter, EventStatus, EventType
from storage.events import EventRecord
from tests.factories import BASE_TIME, auth, make_events
from tests.graphql_client import EVENT_FIELDS, graphql_data, node_ids, only_error, post_graphql
from tests.sql_statements import SQLStatements

ORG_EVENTS = f"""
query OrgEvents($filter: EventFilter, $containerId: ID, $since: DateTime, $until: DateTime,
                $order: Order, $first: Int, $after: String) {{
  org(id: "acme") {{
    events(filter: $filter, containerId: $containerId, since: $since, until: $until,
           order: $order, first: $first, after: $after) {{
      edges {{ cursor node {{ {EVENT_FIELDS} }} }}
      pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }}
    }}
  }}
}}
"""

# Every event type with every status, spread over three containers, twice over.
MIXED = [
    (f"c{index % 3}", {"event_type": event_type, "status": status, "actor": f"user{index}"})
    for index, (event_type, status) in enumerate(product(EventType, EventStatus))
] * 2


def selected_by(event_filter: EventFilter, row: EventRecord) -> bool:
    if event_filter is EventFilter.FAIL:
        return row["status"] == EventStatus.FAILURE
    return row["event_type"] == event_filter.value


async def org_events(client: httpx.AsyncClient, key: str, **variables: Any) -> dict[str, Any]:
    data = await graphql_data(client, key, ORG_EVENTS, variables)
    return data["org"]["events"]


async def walk(client: httpx.AsyncClient, key: str, **variables: Any) -> list[int]:
    """Every event id, page by page from endCursor, as a frontend's "load more" does."""
    seen: list[int] = []
    after = None
    while True:
        page = await org_events(client, key, after=after, **variables)
        seen += node_ids(page)
        if not page["pageInfo"]["hasNextPage"]:
            return seen
        after = page["pageInfo"]["endCursor"]
        assert after == page["edges"][-1]["cursor"]


@pytest.mark.parametrize("event_filter", list(EventFilter))
async def test_each_filter_returns_exactly_its_events_as_rest_does(
    client, db, acme_key, event_filter
):
    rows = await make_events(db, "acme", MIXED)
    expected = [row["id"] for row in reversed(rows) if selected_by(event_filter, row)]

    page = await org_events(client, acme_key, filter=event_filter.name)
    rest = await client.get(
        f"/orgs/acme/container_events/by_{event_filter.value.lower()}", headers=auth(acme_key)
    )

    assert expected
    assert node_ids(page) == expected
    assert [item["id"] for item in rest.json()["events"]] == expected


async def test_events_show_every_stored_field_as_rest_does(client, db, acme_key):
    await make_events(
        db, "acme", [("c1", {"event_type": "BLOCK", "actor": "alice", "details": {"ip": "::1"}})]
    )

    [edge] = (await org_events(client, acme_key))["edges"]
    [rest] = (await client.get("/orgs/acme/events", headers=auth(acme_key))).json()["events"]

    node = edge["node"]
    assert int(node["id"]) == rest["id"]
    assert node["eventType"] == rest["event_type"] == "BLOCK"
    assert node["status"] == rest["status"] == "SUCCESS"
    assert node["actor"] == rest["actor"] == "alice"
    assert node["details"] == rest["details"] == {"ip": "::1"}
    assert node["container"] == {"id": "c1"}
    for graphql_field, rest_field in (("timestamp", "timestamp"), ("receivedAt", "received_at")):
        assert datetime.fromisoformat(node[graphql_field]) == datetime.fromisoformat(
            rest[rest_field]
        )
    assert datetime.fromisoformat(node["timestamp"]) == BASE_TIME


async def test_events_without_details_show_an_empty_object(client, db, acme_key):
    await make_events(db, "acme", [("c1", {})])

    [edge] = (await org_events(client, acme_key))["edges"]

    assert edge["node"]["details"] == {}
    assert edge["node"]["actor"] is None


@pytest.mark.parametrize("order", ["DESC", "ASC"])
async def test_paging_walks_every_event_once(client, db, acme_key, order):
    rows = await make_events(db, "acme", [("c1", {})] * 11)
    ids = [row["id"] for row in rows]

    walked = await walk(client, acme_key, first=3, order=order)

    assert walked == (ids if order == "ASC" else ids[::-1])


async def test_paging_newest_first_is_exact_while_events_arrive_mid_walk(client, db, acme_key):
    ids = [row["id"] for row in await make_events(db, "acme", [("c1", {})] * 10)]
    walked: list[int] = []
    after = None
    while True:
        page = await org_events(client, acme_key, first=3, after=after)
        walked += node_ids(page)
        await make_events(db, "acme", [("c1", {})])  # newer than the walk's start
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]

    assert walked == ids[::-1]


async def test_paging_oldest_first_reaches_events_logged_mid_walk(client, db, acme_key):
    ids = [row["id"] for row in await make_events(db, "acme", [("c1", {})] * 10)]
    walked: list[int] = []
    after = None
    for page_number in range(100):
        page = await org_events(client, acme_key, order="ASC", first=3, after=after)
        walked += node_ids(page)
        if page_number < 3:
            ids += [row["id"] for row in await make_events(db, "acme", [("c2", {})])]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]

    assert walked == ids


async def test_a_cursor_means_the_same_position_in_rest_and_graphql(client, db, acme_key):
    await make_events(db, "acme", [("c1", {})] * 7)
    first_page = await org_events(client, acme_key, first=3)
    rest_first_page = (
        await client.get("/orgs/acme/events", params={"limit": 3}, headers=auth(acme_key))
    ).json()

    rest_after_graphql = await client.get(
        "/orgs/acme/events",
        params={"limit": 3, "cursor": first_page["pageInfo"]["endCursor"]},
        headers=auth(acme_key),
    )
    graphql_after_rest = await org_events(
        client, acme_key, first=3, after=rest_first_page["next_cursor"]
    )

    assert first_page["pageInfo"]["endCursor"] == rest_first_page["next_cursor"]
    assert [item["id"] for item in rest_after_graphql.json()["events"]] == node_ids(
        graphql_after_rest
    )
    assert rest_after_graphql.json()["next_cursor"] == (graphql_after_rest["pageInfo"]["endCursor"])


async def test_an_events_own_cursor_is_its_edges_cursor(client, db, acme_key):
    await make_events(db, "acme", [("c1", {})] * 3)
    query = '{ org(id: "acme") { events { edges { cursor node { id cursor } } } } }'

    edges = (await graphql_data(client, acme_key, query))["org"]["events"]["edges"]

    assert len(edges) == 3
    assert [edge["node"]["cursor"] for edge in edges] == [edge["cursor"] for edge in edges]
    assert len({edge["cursor"] for edge in edges}) == 3


async def test_page_info_describes_the_page(client, db, acme_key):
    await make_events(db, "acme", [("c1", {})] * 3)

    first = await org_events(client, acme_key, first=2)
    last = await org_events(client, acme_key, first=2, after=first["pageInfo"]["endCursor"])

    assert first["pageInfo"] == {
        "hasNextPage": True,
        "hasPreviousPage": False,
        "startCursor": first["edges"][0]["cursor"],
        "endCursor": first["edges"][-1]["cursor"],
    }
    assert last["pageInfo"]["hasNextPage"] is False
    assert last["pageInfo"]["hasPreviousPage"] is True
    assert len(last["edges"]) == 1


async def test_first_defaults_to_a_page_of_one_hundred(client, db, acme_key):
    await make_events(db, "acme", [("c1", {})] * 101)

    page = await org_events(client, acme_key)

    assert len(page["edges"]) == 100
    assert page["pageInfo"]["hasNextPage"] is True


async def test_first_of_one_thousand_is_allowed(client, db, acme_key):
    await make_events(db, "acme", [("c1", {})] * 3)

    page = await org_events(client, acme_key, first=1000)

    assert len(page["edges"]) == 3


async def test_container_id_narrows_the_org_events_to_one_container(client, db, acme_key):
    rows = await make_events(db, "acme", MIXED)

    page = await org_events(client, acme_key, containerId="c1")

    assert node_ids(page) == [row["id"] for row in reversed(rows) if row["container_id"] == "c1"]
    assert {edge["node"]["container"]["id"] for edge in page["edges"]} == {"c1"}


async def test_container_id_combines_with_a_filter(client, db, acme_key):
    rows = await make_events(db, "acme", MIXED)

    page = await org_events(client, acme_key, containerId="c2", filter="FAIL")

    assert node_ids(page) == [
        row["id"]
        for row in reversed(rows)
        if row["container_id"] == "c2" and row["status"] == "FAILURE"
    ]


async def test_since_is_inclusive_and_until_exclusive(client, db, acme_key):
    rows = await make_events(db, "acme", [("c1", {})] * 6)  # one minute apart
    since = (BASE_TIME + timedelta(minutes=2)).isoformat()
    until = (BASE_TIME + timedelta(minutes=4)).isoformat()

    page = await org_events(client, acme_key, since=since, until=until, order="ASC")

    assert node_ids(page) == [rows[2]["id"], rows[3]["id"]]


async def test_since_and_until_accept_any_timezone(client, db, acme_key):
    rows = await make_events(db, "acme", [("c1", {})] * 3)

    page = await org_events(client, acme_key, since="2023-11-18T13:01:00+01:00")

    assert node_ids(page) == [rows[2]["id"], rows[1]["id"]]


async def test_order_defaults_to_newest_first_and_asc_gives_oldest_first(client, db, acme_key):
    ids = [row["id"] for row in await make_events(db, "acme", [("c1", {})] * 4)]

    assert node_ids(await org_events(client, acme_key)) == ids[::-1]
    assert node_ids(await org_events(client, acme_key, order="ASC")) == ids


CONTAINER = f"""
query Container($id: ID!, $after: String) {{
  org(id: "acme") {{
    container(id: $id) {{
      id createdAt lastEventAt
      events(first: 2, after: $after, order: ASC) {{
        edges {{ cursor node {{ {EVENT_FIELDS} }} }}
        pageInfo {{ hasNextPage endCursor }}
      }}
    }}
  }}
}}
"""


async def test_container_lists_only_its_own_events(client, db, acme_key):
    rows = await make_events(db, "acme", MIXED)
    expected = [row["id"] for row in rows if row["container_id"] == "c0"]
    walked: list[int] = []
    after = None
    while True:
        data = await graphql_data(client, acme_key, CONTAINER, {"id": "c0", "after": after})
        container = data["org"]["container"]
        walked += node_ids(container["events"])
        if not container["events"]["pageInfo"]["hasNextPage"]:
            break
        after = container["events"]["pageInfo"]["endCursor"]

    assert container["id"] == "c0"
    assert datetime.fromisoformat(container["lastEventAt"]) == max(
        row["timestamp"] for row in rows if row["container_id"] == "c0"
    )
    assert walked == expected


@pytest.mark.parametrize("container_id", ["missing", "not a valid id!"])
async def test_unknown_container_is_not_found(client, db, acme_key, container_id):
    await make_events(db, "acme", [("c1", {})])

    answer = await post_graphql(client, acme_key, CONTAINER, {"id": container_id})

    assert answer["data"] == {"org": {"container": None}}
    assert only_error(answer)["extensions"]["code"] == "NOT_FOUND"


async def test_another_orgs_container_is_not_found(client, db, acme_key, other_key):
    await make_events(db, "other", [("theirs", {})])

    answer = await post_graphql(client, acme_key, CONTAINER, {"id": "theirs"})

    assert answer["data"] == {"org": {"container": None}}
    assert only_error(answer)["message"] == "Container 'theirs' not found."
    assert only_error(answer)["extensions"]["code"] == "NOT_FOUND"


CONTAINERS = """
query Containers($first: Int, $after: String) {
  org(id: "acme") {
    containers(first: $first, after: $after) {
      edges { cursor node { id lastEventAt } }
      pageInfo { hasNextPage endCursor }
    }
  }
}
"""


async def test_containers_page_in_id_order_without_skips_or_repeats(
    client, db, acme_key, other_key
):
    await make_events(db, "acme", [(f"box-{index:02}", {}) for index in range(7)])
    await make_events(db, "other", [("not-mine", {})])
    walked: list[str] = []
    after = None
    while True:
        data = await graphql_data(client, acme_key, CONTAINERS, {"first": 3, "after": after})
        page = data["org"]["containers"]
        walked += [edge["node"]["id"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]

    assert walked == [f"box-{index:02}" for index in range(7)]


@pytest.mark.parametrize("first", [0, -1, 1001])
async def test_first_out_of_bounds_is_bad_user_input(client, db, acme_key, first):
    events_answer = await post_graphql(client, acme_key, ORG_EVENTS, {"first": first})
    containers_answer = await post_graphql(client, acme_key, CONTAINERS, {"first": first})

    for answer in (events_answer, containers_answer):
        error = only_error(answer)
        assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "first"}


@pytest.mark.parametrize("after", ["garbage", "", "Yzk", "ZTE5OTk5OTk5OTk5OTk5OTk5OTk5OTk"])
async def test_an_after_this_api_did_not_issue_is_bad_user_input(client, db, acme_key, after):
    answer = await post_graphql(client, acme_key, ORG_EVENTS, {"after": after})

    assert only_error(answer)["extensions"] == {"code": "BAD_USER_INPUT", "field": "after"}


async def test_an_event_cursor_is_not_a_containers_cursor(client, db, acme_key):
    await make_events(db, "acme", [("c1", {})] * 2)
    page = await org_events(client, acme_key, first=1)

    answer = await post_graphql(
        client, acme_key, CONTAINERS, {"after": page["pageInfo"]["endCursor"]}
    )

    assert only_error(answer)["extensions"] == {"code": "BAD_USER_INPUT", "field": "after"}


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({"since": "2023-11-18T12:00:00"}, "since"),
        ({"until": "2023-11-18T12:00:00"}, "until"),
        ({"since": "2023-11-18T13:00:00Z", "until": "2023-11-18T12:00:00Z"}, "until"),
        ({"containerId": "no spaces allowed"}, "containerId"),
    ],
)
async def test_bad_window_or_container_id_is_bad_user_input(client, db, acme_key, variables, field):
    answer = await post_graphql(client, acme_key, ORG_EVENTS, variables)

    assert only_error(answer)["extensions"] == {"code": "BAD_USER_INPUT", "field": field}


@pytest.mark.parametrize("variables", [{"order": "SIDEWAYS"}, {"filter": "UPDATE"}])
async def test_an_unknown_enum_value_is_bad_user_input(client, db, acme_key, variables):
    answer = await post_graphql(client, acme_key, ORG_EVENTS, variables)

    assert only_error(answer)["extensions"]["code"] == "BAD_USER_INPUT"


CONTAINER_TIMES = """
query ($first: Int) {
  org(id: "acme") {
    name
    events(first: $first) { edges { node { id container { id createdAt } } } }
  }
}
"""


async def statements_for_a_page(
    client: httpx.AsyncClient, db: Database, key: str, document: str, first: int
) -> list[str]:
    with SQLStatements(db) as seen:
        data = await graphql_data(client, key, document, {"first": first})
    edges = data["org"]["events"]["edges"]
    assert len({edge["node"]["container"]["id"] for edge in edges}) == first
    return seen.statements


async def test_event_containers_load_in_one_batch_whatever_the_page_size(client, db, acme_key):
    await make_events(db, "acme", [(f"box-{index}", {}) for index in range(100)])
    await graphql_data(client, acme_key, CONTAINER_TIMES, {"first": 1})  # set-up not counted

    for_ten = await statements_for_a_page(client, db, acme_key, CONTAINER_TIMES, first=10)
    for_a_hundred = await statements_for_a_page(client, db, acme_key, CONTAINER_TIMES, first=100)

    # The page of events and its containers in one batch; the key's lookup too, as this
    # suite turns the server's key cache off. The org itself was read by the first request.
    assert len(for_ten) == len(for_a_hundred) == 3
    assert not any("organizations" in statement for statement in for_a_hundred)


async def test_a_container_selected_for_its_id_alone_is_not_read(client, db, acme_key):
    """The event's own column is its container's id (the events table's foreign key
    guarantees the row), so `container { id }` costs no statement of its own."""
    await make_events(db, "acme", [(f"box-{index}", {}) for index in range(10)])
    await org_events(client, acme_key, first=1)

    with SQLStatements(db) as seen:
        page = await org_events(client, acme_key, first=10)

    assert {edge["node"]["container"]["id"] for edge in page["edges"]} == {
        f"box-{index}" for index in range(10)
    }
    assert not any("containers" in statement for statement in seen.statements)
