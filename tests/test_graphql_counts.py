"""Counts over GraphQL: EventConnection.totalCount and Organization.eventCounts."""

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event

from storage.counts import CountBy
from storage.domain import EventFilter
from storage.events import Window
from tests.factories import BASE_TIME, auth, make_events
from tests.graphql_client import graphql_data, only_error, post_graphql
from tests.sql_statements import COUNT_CALL, SQLStatements
from tests.test_counts import (
    DAY,
    INSTANTS,
    MIXED,
    ROLL_UP_NAME,
    TIMED,
    counting,
    expected_counts,
    log_out_of_order,
    scattered_events,
    stored_rows,
)

ORG_EVENTS = """
query OrgEvents($filter: EventFilter, $containerId: ID, $since: DateTime, $until: DateTime,
                $first: Int, $after: String) {
  org(id: "acme") {
    events(filter: $filter, containerId: $containerId, since: $since, until: $until,
           first: $first, after: $after) {
      totalCount
      edges { node { id } }
      pageInfo { hasNextPage endCursor }
    }
  }
}
"""

PAGE_ONLY = """
query Page($filter: EventFilter) {
  org(id: "acme") { events(filter: $filter, first: 5) { edges { node { id container { id } } } } }
}
"""

CONTAINER_TOTAL = """
query ContainerTotal($filter: EventFilter) {
  org(id: "acme") { container(id: "c1") { events(filter: $filter, first: 1) { totalCount } } }
}
"""

EVENT_COUNTS = """
query EventCounts($org: ID! = "acme", $since: DateTime!, $until: DateTime!, $by: CountBy!,
                  $filter: EventFilter, $containerId: ID) {
  org(id: $org) {
    eventCounts(since: $since, until: $until, by: $by, filter: $filter,
                containerId: $containerId) { key count }
  }
}
"""

WINDOWS = {
    "all_time": {},
    "since": {"since": (BASE_TIME + timedelta(minutes=5)).isoformat()},
    "both": {
        "since": (BASE_TIME + timedelta(minutes=3)).isoformat(),
        "until": (BASE_TIME + timedelta(minutes=17)).isoformat(),
    },
}


async def walk(client, key: str, **variables: Any) -> tuple[int, list[int]]:
    """The totalCount of the first page, and every id listed walking all pages."""
    ids: list[int] = []
    totals: set[int] = set()
    after = None
    while True:
        page = {"first": 4, "after": after, **variables}
        data = await graphql_data(client, key, ORG_EVENTS, page)
        connection = data["org"]["events"]
        totals.add(connection["totalCount"])
        ids += [int(edge["node"]["id"]) for edge in connection["edges"]]
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    [total] = totals  # the same on every page: it counts the whole list, not what is left
    return total, ids


@pytest.mark.parametrize("window", WINDOWS.values(), ids=WINDOWS.keys())
@pytest.mark.parametrize("container_id", [None, "c1"])
@pytest.mark.parametrize("event_filter", [None, *EventFilter])
async def test_total_count_is_the_number_of_events_the_connection_walks_through(
    client, db, acme_key, other_key, event_filter, container_id, window
):
    await make_events(db, "acme", MIXED)
    await make_events(db, "other", MIXED)
    variables = {"filter": event_filter, "containerId": container_id, **window}

    total, ids = await walk(client, acme_key, **variables)

    assert total == len(ids)


async def test_a_containers_total_count_counts_only_that_container(client, db, acme_key):
    await make_events(db, "acme", MIXED)

    data = await graphql_data(client, acme_key, CONTAINER_TOTAL, {"filter": "FAIL"})

    expected = sum(1 for c, fields in MIXED if c == "c1" and fields["status"] == "FAILURE")
    assert data["org"]["container"]["events"]["totalCount"] == expected


async def test_total_count_is_not_computed_unless_selected(client, db, acme_key):
    await make_events(db, "acme", MIXED)

    with SQLStatements(db) as unselected:
        await graphql_data(client, acme_key, PAGE_ONLY, {"filter": "ACCESS"})
    with SQLStatements(db) as selected:
        await graphql_data(client, acme_key, ORG_EVENTS, {"filter": "ACCESS"})

    assert counting(unselected) == []
    assert len(counting(selected)) == 1


async def test_total_count_is_read_on_the_read_pool_with_one_statement_per_shape(
    client, db, acme_key
):
    await make_events(db, "acme", MIXED)
    through_sessions: list[str] = []

    def seen(_connection: object, _cursor: object, statement: str, *_rest: object) -> None:
        through_sessions.append(statement)

    windows = [{}, WINDOWS["both"], WINDOWS["since"]]
    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        with SQLStatements(db) as sent:
            for window in windows:
                for container_id in ["c1", "c2"]:
                    variables = {"filter": "FAIL", "containerId": container_id, **window}
                    total, ids = await walk(client, acme_key, **variables)
                    assert total == len(ids), variables
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)

    # Nothing counted through SQLAlchemy's engine: every count went to a read-pool reader.
    assert not any(
        ROLL_UP_NAME.search(statement) or COUNT_CALL.search(statement)
        for statement in through_sessions
    )
    # One count per page; each window's shape is one statement, whatever the container.
    counts = counting(sent)
    assert len(counts) >= 2 * len(windows)
    assert len(set(counts)) == len(windows)


@pytest.mark.parametrize("by", list(CountBy))
async def test_event_counts_match_the_rest_twin_for_every_grouping(client, db, acme_key, by):
    await make_events(db, "acme", TIMED)

    data = await graphql_data(client, acme_key, EVENT_COUNTS, {**DAY, "by": by.value})
    rest = await client.get(
        "/orgs/acme/events/counts", params={**DAY, "by": by.value}, headers=auth(acme_key)
    )

    assert data["org"]["eventCounts"] == rest.json()["counts"]
    assert sum(bucket["count"] for bucket in data["org"]["eventCounts"]) == 6


async def test_event_counts_by_hour_are_keyed_by_each_hours_utc_start(client, db, acme_key):
    await make_events(db, "acme", TIMED)
    window = {"since": "2023-11-18T02:30:00+02:00", "until": "2023-11-18T03:30:00+02:00"}

    data = await graphql_data(client, acme_key, EVENT_COUNTS, {**window, "by": "HOUR"})

    assert data["org"]["eventCounts"] == [
        {"key": "2023-11-18T00:00:00Z", "count": 1},
        {"key": "2023-11-18T01:00:00Z", "count": 1},
    ]


async def test_event_counts_take_a_filter_and_a_container(client, db, acme_key):
    await make_events(db, "acme", TIMED)
    variables = {**DAY, "by": "TYPE", "filter": "FAIL", "containerId": "c2"}

    data = await graphql_data(client, acme_key, EVENT_COUNTS, variables)

    assert data["org"]["eventCounts"] == [
        {"key": "ACCESS", "count": 1},
        {"key": "EXPIRE", "count": 1},
    ]


@pytest.mark.parametrize("by", list(CountBy))
async def test_counts_over_windows_inside_hours_equal_a_count_of_the_stored_rows(
    client, db, acme_key, by
):
    await log_out_of_order(db, client, acme_key, scattered_events(seed=3, count=150))
    rows = await stored_rows(db)

    for since, until in [(1, 7), (3, 4), (2, 3), (0, 5)]:
        window = Window(INSTANTS[since], INSTANTS[until])
        for event_filter, container_id in [(None, None), (EventFilter.FAIL, None), (None, "box01")]:
            variables = {
                "since": window.since.isoformat(),
                "until": window.until.isoformat(),
                "by": by.value,
                "filter": event_filter,
                "containerId": container_id,
            }
            counts = await graphql_data(client, acme_key, EVENT_COUNTS, variables)
            listed = await graphql_data(client, acme_key, ORG_EVENTS, {**variables, "first": 1})

            buckets, total = expected_counts(rows, by, window, event_filter, container_id)
            found = [(bucket["key"], bucket["count"]) for bucket in counts["org"]["eventCounts"]]
            assert found == buckets, variables
            assert listed["org"]["events"]["totalCount"] == total, variables


BAD_VARIABLES = {
    "naive_since": ({"since": "2023-11-18T00:00:00"}, "since"),
    "until_before_since": ({"since": DAY["until"], "until": DAY["since"]}, "until"),
    "over_1000_hours": ({"until": "2024-01-01T00:00:00Z", "by": "HOUR"}, "until"),
    "bad_container_id": ({"containerId": "x" * 129}, "containerId"),
}


@pytest.mark.parametrize(("overrides", "field"), BAD_VARIABLES.values(), ids=BAD_VARIABLES.keys())
async def test_bad_input_is_bad_user_input_naming_the_argument_before_any_counting(
    client, db, acme_key, overrides, field
):
    await make_events(db, "acme", TIMED)
    variables = {**DAY, "by": "DAY", **overrides}

    with SQLStatements(db) as seen:
        answer = await post_graphql(client, acme_key, EVENT_COUNTS, variables)

    assert only_error(answer)["extensions"] == {"code": "BAD_USER_INPUT", "field": field}
    assert counting(seen) == []


@pytest.mark.parametrize("variables", [{"by": "WEEK"}, {"by": "TYPE", "since": None}])
async def test_an_unknown_grouping_or_a_missing_window_end_is_bad_user_input(
    client, acme_key, variables
):
    answer = await post_graphql(client, acme_key, EVENT_COUNTS, {**DAY, **variables})

    assert only_error(answer)["extensions"]["code"] == "BAD_USER_INPUT"


async def test_another_orgs_counts_are_not_found(client, db, acme_key, other_key):
    await make_events(db, "other", TIMED)

    answer = await post_graphql(
        client, acme_key, EVENT_COUNTS, {**DAY, "by": "TYPE", "org": "other"}
    )

    assert only_error(answer)["extensions"]["code"] == "NOT_FOUND"
    assert answer["data"] == {"org": None}
