"""Windows as wide as the calendar, and at its ends, through REST and GraphQL.

Counts over years 1 to 9999 answer from a statement of the same size as a year's; list pages
take a `since` in the calendar's last hour; time bucket keys before year 1000 keep four digits.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from storage import events as storage_events
from storage.counts import CountBy
from storage.domain import EventFilter
from storage.events import Window
from tests.factories import auth, make_events
from tests.graphql_client import graphql_data, node_ids
from tests.sql_statements import SQLStatements
from tests.test_counts import counting, expected_counts, stored_rows
from tests.test_graphql_counts import EVENT_COUNTS

FIRST = "0001-01-01T00:00:00Z"
LAST_DAY = "9999-12-31T00:00:00Z"
LAST_MOMENT = "9999-12-31T23:59:59.999999Z"
WIDEST = {"since": FIRST, "until": LAST_DAY}
LAST_HOUR = datetime(9999, 12, 31, 23, tzinfo=UTC)

# Events across the calendar: its first hours, before year 1000, around 1970, this century,
# its last day (before LAST_DAY and after it).
SPREAD = [
    ("c1", {"event_type": "ACCESS", "timestamp": "0001-01-01T00:00:00Z"}),
    ("c2", {"event_type": "BLOCK", "status": "FAILURE", "timestamp": "0001-01-01T05:30:00Z"}),
    ("c1", {"event_type": "CREATE", "timestamp": "0999-12-31T23:59:59Z"}),
    ("c3", {"event_type": "ACCESS", "status": "FAILURE", "timestamp": "1000-01-01T00:00:00Z"}),
    ("c2", {"event_type": "ACCESS", "timestamp": "1969-12-31T23:00:00Z"}),
    ("c1", {"event_type": "EXPIRE", "timestamp": "2023-11-18T12:00:00Z"}),
    ("c1", {"event_type": "ACCESS", "status": "FAILURE", "timestamp": "2023-11-18T12:01:00Z"}),
    ("c3", {"event_type": "DELETE", "timestamp": "9999-12-30T23:59:59Z"}),
    ("c2", {"event_type": "ACCESS", "timestamp": "9999-12-31T00:00:00Z"}),
    ("c1", {"event_type": "UPDATE", "status": "FAILURE", "timestamp": "9999-12-31T23:40:00Z"}),
    ("c1", {"event_type": "ACCESS", "timestamp": LAST_MOMENT}),
]

SELECTIONS = {
    "all": (None, None),
    "fail": (EventFilter.FAIL, None),
    "container": (None, "c1"),
    "access_in_container": (EventFilter.ACCESS, "c1"),
}
GROUPINGS = [CountBy.CONTAINER, CountBy.TYPE, CountBy.STATUS]
WIDE_WINDOWS = {"years_1_to_9999": WIDEST, "to_the_last_moment": {"since": FIRST}}


def parsed(text: str) -> datetime:
    return datetime.fromisoformat(text)


def rest_params(
    window: dict[str, str], by: CountBy, event_filter: EventFilter | None, container: str | None
) -> dict[str, str]:
    params = {**window, "by": by.value.lower()}
    params.setdefault("until", LAST_MOMENT)
    if event_filter is not None:
        params["filter"] = event_filter.value.lower()
    if container is not None:
        params["container_id"] = container
    return params


def as_window(params: dict[str, str]) -> Window:
    return Window(parsed(params["since"]), parsed(params["until"]))


@pytest.mark.parametrize("window", WIDE_WINDOWS.values(), ids=WIDE_WINDOWS.keys())
@pytest.mark.parametrize("selection", SELECTIONS.values(), ids=SELECTIONS.keys())
@pytest.mark.parametrize("by", GROUPINGS)
async def test_counts_over_the_whole_calendar_answer_the_stored_events(
    client, db, acme_key, by, selection, window
):
    await make_events(db, "acme", SPREAD)
    rows = await stored_rows(db)
    event_filter, container = selection
    params = rest_params(window, by, event_filter, container)
    buckets, total = expected_counts(
        rows, by, as_window(params), event_filter=event_filter, container_id=container
    )

    answer = await client.get("/orgs/acme/events/counts", params=params, headers=auth(acme_key))
    data = await graphql_data(
        client,
        acme_key,
        EVENT_COUNTS,
        {
            "since": params["since"],
            "until": params["until"],
            "by": by.value,
            "filter": None if event_filter is None else event_filter.value,
            "containerId": container,
        },
    )

    assert answer.status_code == 200, answer.text
    assert answer.json()["counts"] == [{"key": key, "count": count} for key, count in buckets]
    assert answer.json()["total"] == total > 0
    assert data["org"]["eventCounts"] == answer.json()["counts"]


async def test_the_whole_calendar_totals_every_stored_event(client, db, acme_key):
    await make_events(db, "acme", SPREAD)

    answer = await client.get(
        "/orgs/acme/events/counts",
        params={"since": FIRST, "until": LAST_MOMENT, "by": "container"},
        headers=auth(acme_key),
    )

    assert answer.status_code == 200, answer.text
    assert answer.json()["total"] == len(SPREAD) - 1  # all but the one at LAST_MOMENT itself


async def test_a_wide_count_sends_the_same_statement_for_a_year_as_for_ten_thousand(
    client, db, acme_key
):
    """The statement must not grow with the window: one parameter per day once made a
    9999-year window take seconds of the server's only thread and refuse with a 500."""
    await make_events(db, "acme", SPREAD)
    since = datetime(2000, 1, 1, tzinfo=UTC)
    windows = [(since, since + timedelta(days=days)) for days in (400, 4000)]
    windows.append((parsed(FIRST), parsed(LAST_DAY)))

    sent: list[list[str]] = []
    for start, end in windows:
        with SQLStatements(db) as seen:
            answer = await client.get(
                "/orgs/acme/events/counts",
                params={"since": start.isoformat(), "until": end.isoformat(), "by": "container"},
                headers=auth(acme_key),
            )
        assert answer.status_code == 200, answer.text
        sent.append(counting(seen))

    assert len(sent[0]) == 1
    assert sent[1] == sent[0] and sent[2] == sent[0]


# List pages at the calendar's ends.

ORG_EVENTS = """
query Events($since: DateTime, $until: DateTime) {
  org(id: "acme") {
    events(since: $since, until: $until, first: 100) { edges { node { id } } }
    container(id: "c1") {
      events(since: $since, until: $until, first: 100) { edges { node { id } } }
    }
  }
}
"""

EDGE_WINDOWS = {
    "since_in_the_last_hour": {"since": "9999-12-31T23:30:00Z"},
    "since_in_the_last_minute": {"since": "9999-12-31T23:59:30Z"},
    "since_and_until_in_the_last_hour": {
        "since": "9999-12-31T23:30:00Z",
        "until": "9999-12-31T23:50:00Z",
    },
    "until_at_the_last_moment": {"since": "9999-12-31T23:00:00.5Z", "until": LAST_MOMENT},
    "since_just_before_the_last_moment": {"since": "9999-12-31T23:59:59.999998Z"},
    "since_the_first_moment": {"since": FIRST},
    "until_the_first_hour_ends": {"until": "0001-01-01T01:00:00Z"},
    "the_whole_calendar": {"since": FIRST, "until": LAST_MOMENT},
}


def listed_ids(rows: list[dict[str, Any]], window: dict[str, str], **match: str) -> list[int]:
    since, until = window.get("since"), window.get("until")
    return sorted(
        (
            row["id"]
            for row in rows
            if (since is None or row["timestamp"] >= parsed(since))
            and (until is None or row["timestamp"] < parsed(until))
            and all(row[key] == value for key, value in match.items())
        ),
        reverse=True,
    )


@pytest.fixture(params=["received_now", "received_in_year_9999"])
async def spread(request, db, acme_key, monkeypatch) -> list[dict[str, Any]]:
    """SPREAD stored as received now (the far-off ones late), or with a clock at the end of
    the calendar, so that events of its last hour fill the windows' zones instead."""
    if request.param == "received_in_year_9999":
        monkeypatch.setattr(storage_events, "utcnow", lambda: LAST_HOUR + timedelta(minutes=50))
    return [dict(row) for row in await make_events(db, "acme", SPREAD)]


@pytest.mark.parametrize("window", EDGE_WINDOWS.values(), ids=EDGE_WINDOWS.keys())
async def test_list_pages_at_the_ends_of_the_calendar_list_the_windows_events(
    client, acme_key, spread, window
):
    expected = {
        "/orgs/acme/events": listed_ids(spread, window),
        "/orgs/acme/container_events/by_access": listed_ids(spread, window, event_type="ACCESS"),
        "/orgs/acme/container_events/by_fail": listed_ids(spread, window, status="FAILURE"),
        "/orgs/acme/containers/c1/events": listed_ids(spread, window, container_id="c1"),
    }

    for route, ids in expected.items():
        answer = await client.get(route, params=window, headers=auth(acme_key))
        assert answer.status_code == 200, (route, answer.text)
        assert [row["id"] for row in answer.json()["events"]] == ids, route
    org = (await graphql_data(client, acme_key, ORG_EVENTS, window))["org"]
    assert node_ids(org["events"]) == expected["/orgs/acme/events"]
    assert node_ids(org["container"]["events"]) == expected["/orgs/acme/containers/c1/events"]


async def test_a_since_in_the_last_hour_finds_only_that_hours_events(client, acme_key, spread):
    answer = await client.get(
        "/orgs/acme/events", params={"since": "9999-12-31T23:30:00Z"}, headers=auth(acme_key)
    )

    assert answer.status_code == 200, answer.text
    assert [row["timestamp"] for row in answer.json()["events"]] == [
        LAST_MOMENT,
        "9999-12-31T23:40:00Z",
    ]


# Time buckets at the calendar's ends.

BUCKET_CASES = {
    "days_before_1000": (
        {"since": "0999-12-30T00:00:00Z", "until": "1000-01-01T12:00:00Z", "by": "day"},
        [("0999-12-30T00:00:00Z", 0), ("0999-12-31T00:00:00Z", 1), ("1000-01-01T00:00:00Z", 1)],
    ),
    "hours_of_year_1": (
        {"since": FIRST, "until": "0001-01-01T07:00:00Z", "by": "hour"},
        [(f"0001-01-01T{hour:02d}:00:00Z", int(hour in (0, 5))) for hour in range(7)],
    ),
    "hours_of_the_last_day": (
        {"since": "9999-12-30T23:30:00Z", "until": LAST_MOMENT, "by": "hour"},
        [("9999-12-30T23:00:00Z", 1), ("9999-12-31T00:00:00Z", 1)]
        + [(f"9999-12-31T{hour:02d}:00:00Z", 0) for hour in range(1, 23)]
        + [("9999-12-31T23:00:00Z", 1)],
    ),
    "days_at_the_end": (
        {"since": "9999-12-29T00:00:00Z", "until": LAST_MOMENT, "by": "day"},
        [("9999-12-29T00:00:00Z", 0), ("9999-12-30T00:00:00Z", 1), ("9999-12-31T00:00:00Z", 2)],
    ),
    "the_last_half_hour": (
        {"since": "9999-12-31T23:30:00Z", "until": LAST_MOMENT, "by": "hour"},
        [("9999-12-31T23:00:00Z", 1)],
    ),
}


@pytest.mark.parametrize(("params", "buckets"), BUCKET_CASES.values(), ids=BUCKET_CASES.keys())
async def test_time_buckets_at_the_ends_of_the_calendar_are_rfc_3339_keys(
    client, db, acme_key, params, buckets
):
    await make_events(db, "acme", SPREAD)

    answer = await client.get("/orgs/acme/events/counts", params=params, headers=auth(acme_key))
    data = await graphql_data(
        client,
        acme_key,
        EVENT_COUNTS,
        {"since": params["since"], "until": params["until"], "by": params["by"].upper()},
    )

    assert answer.status_code == 200, answer.text
    assert answer.json()["counts"] == [{"key": key, "count": count} for key, count in buckets]
    assert answer.json()["total"] == sum(count for _, count in buckets)
    assert data["org"]["eventCounts"] == answer.json()["counts"]
