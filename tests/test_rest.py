"""REST shim errors: every bad input is a 400 problem naming its field; 404, 405 and 500."""

from typing import Any

import httpx
import orjson
import pytest

from gateway import rest
from tests.factories import auth, count_events, make_events
from tests.rest_assertions import assert_problem

EVENTS_OF_C1 = "/orgs/acme/containers/c1/events"
LONG_ID = "x" * 129


def event_with(**fields: Any) -> bytes:
    return orjson.dumps({"event_type": "ACCESS", **fields})


# (body, field the problem must name)
BAD_BODIES = {
    "malformed_json": (b'{"event_type": "ACCESS",', "body"),
    "empty_body": (b"", "body"),
    "not_utf8": (b'{"event_type": "\xff"}', "body"),
    "lone_surrogate": (b'{"event_type": "ACCESS", "actor": "\\ud800"}', "body"),
    "array_body": (b'["ACCESS"]', "body"),
    "string_body": (b'"ACCESS"', "body"),
    "null_body": (b"null", "body"),
    "wrapped_non_object": (b'{"event": "ACCESS"}', "event"),
    "unknown_field": (event_with(colour="red"), "colour"),
    "unknown_field_wrapped": (b'{"event": {"event_type": "ACCESS", "x": 1}}', "event.x"),
    "event_beside_other_fields": (b'{"event": {"event_type": "ACCESS"}, "x": 1}', "x"),
    "missing_event_type": (b'{"status": "SUCCESS"}', "event_type"),
    "missing_event_type_wrapped": (b'{"event": {}}', "event.event_type"),
    "unknown_event_type": (event_with(event_type="OPEN"), "event_type"),
    "unknown_status": (event_with(status="MAYBE"), "status"),
    "null_status": (event_with(status=None), "status"),
    "naive_timestamp": (event_with(timestamp="2023-11-18T12:00:00"), "timestamp"),
    "garbage_timestamp": (event_with(timestamp="yesterday"), "timestamp"),
    "date_only_timestamp": (event_with(timestamp="2023-11-18"), "timestamp"),
    "numeric_timestamp": (event_with(timestamp=1700000000), "timestamp"),
    "iso_week_date_timestamp": (event_with(timestamp="2023-W46-6T12:00:00Z"), "timestamp"),
    "comma_fraction_timestamp": (event_with(timestamp="2023-11-18T12:00:00,5Z"), "timestamp"),
    "basic_format_timestamp": (event_with(timestamp="20231118T120000Z"), "timestamp"),
    "timestamp_with_nul": (event_with(timestamp="2023-11-18T12:00:00\u0000Z"), "timestamp"),
    "offset_of_24_hours": (event_with(timestamp="2023-11-18T12:00:00+24:00"), "timestamp"),
    "out_of_range_timestamp": (event_with(timestamp="9999-12-31T23:59:59-01:00"), "timestamp"),
    "before_year_one_timestamp": (event_with(timestamp="0001-01-01T00:00:00+01:00"), "timestamp"),
    "actor_as_number": (event_with(actor=42), "actor"),
    "actor_too_long": (event_with(actor="a" * 257), "actor"),
    "actor_with_nul": (event_with(actor="al\u0000ice"), "actor"),
    "details_as_list": (event_with(details=[1, 2]), "details"),
    "details_as_string": (event_with(details="{}"), "details"),
    "event_type_as_number": (event_with(event_type=3), "event_type"),
    "status_as_boolean": (event_with(status=True), "status"),
    "event_type_as_list": (event_with(event_type=["ACCESS"]), "event_type"),
    "status_unicode_look_alike": (event_with(status="\u017fuccess"), "status"),
    "event_type_unicode_look_alike": (event_with(event_type="exp\u0131re"), "event_type"),
    "details_over_16_kib": (event_with(details={"blob": "x" * 16 * 1024}), "details"),
    "details_nested_too_deep": (
        b'{"event_type": "ACCESS", "details": ' + b'{"a":' * 300 + b"1" + b"}" * 301,
        "details",
    ),
    "nesting_beyond_the_json_parser": (b"[" * 5000 + b"]" * 5000, "body"),
    "wrapped_type_error": (b'{"event": {"event_type": "ACCESS", "actor": 1}}', "event.actor"),
}


@pytest.mark.parametrize(("body", "field"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_post_body_answers_400_naming_the_field_and_stores_nothing(
    client, db, acme_key, body, field
):
    answer = await client.post(
        EVENTS_OF_C1,
        content=body,
        headers={**auth(acme_key), "Content-Type": "application/json"},
    )

    assert_problem(answer, 400, field)
    assert await count_events(db) == 0


BAD_POST_TARGETS = {
    "container_id_with_space": ("/orgs/acme/containers/c%201/events", "container_id"),
    "container_id_too_long": (f"/orgs/acme/containers/{LONG_ID}/events", "container_id"),
    "container_id_with_slash_encoded_char": ("/orgs/acme/containers/c%3F1/events", "container_id"),
    "org_id_with_space": ("/orgs/ac%20me/containers/c1/events", "org_id"),
    "org_id_too_long": (f"/orgs/{LONG_ID}/containers/c1/events", "org_id"),
    "query_parameter": (f"{EVENTS_OF_C1}?dry_run=1", "dry_run"),
}


@pytest.mark.parametrize(("target", "field"), BAD_POST_TARGETS.values(), ids=BAD_POST_TARGETS)
async def test_post_to_a_bad_target_answers_400_and_stores_nothing(
    client, db, acme_key, target, field
):
    answer = await client.post(target, json={"event_type": "ACCESS"}, headers=auth(acme_key))

    assert_problem(answer, 400, field)
    assert await count_events(db) == 0


# (query string, field the problem must name)
BAD_QUERIES = {
    "limit_zero": ("limit=0", "limit"),
    "limit_over_1000": ("limit=1001", "limit"),
    "limit_not_a_number": ("limit=abc", "limit"),
    "limit_negative": ("limit=-1", "limit"),
    "limit_fraction": ("limit=1.5", "limit"),
    "limit_empty": ("limit=", "limit"),
    "limit_huge": ("limit=99999999999999999999", "limit"),
    "cursor_garbage": ("cursor=not-a-cursor!", "cursor"),
    "cursor_empty": ("cursor=", "cursor"),
    "cursor_of_a_container_list": ("cursor=YzE", "cursor"),
    "since_garbage": ("since=yesterday", "since"),
    "since_naive": ("since=2023-11-18T12:00:00", "since"),
    "since_out_of_range": ("since=9999-12-31T23:59:59-01:00", "since"),
    "until_garbage": ("until=soon", "until"),
    "until_before_since": ("since=2023-11-18T12:00:00Z&until=2023-11-18T11:00:00Z", "until"),
    "order_unknown": ("order=sideways", "order"),
    "order_empty": ("order=", "order"),
    "order_unicode_look_alike": ("order=de%C5%BFc", "order"),
    "since_plus_sign_not_encoded": ("since=2023-11-18T12:00:00+01:00", "since"),
    "unknown_parameter": ("sort=asc", "sort"),
    "duplicated_parameter": ("limit=1&limit=2", "limit"),
}
LIST_PATHS = [
    "/orgs/acme/events",
    "/orgs/acme/container_events/by_fail",
    EVENTS_OF_C1,
]


@pytest.mark.parametrize("path", LIST_PATHS)
@pytest.mark.parametrize(("query", "field"), BAD_QUERIES.values(), ids=BAD_QUERIES)
async def test_bad_query_answers_400_naming_the_parameter(client, db, acme_key, path, query, field):
    await make_events(db, "acme", [("c1", {})])

    answer = await client.get(f"{path}?{query}", headers=auth(acme_key))

    assert_problem(answer, 400, field)
    assert await count_events(db) == 1


BAD_LIST_TARGETS = {
    "org_id_with_space": ("/orgs/ac%20me/events", "org_id"),
    "org_id_too_long": (f"/orgs/{LONG_ID}/container_events/by_access", "org_id"),
    "org_id_non_ascii": ("/orgs/%C3%A4cme/events", "org_id"),
    "container_id_with_space": ("/orgs/acme/containers/c%201/events", "container_id"),
    "container_id_too_long": (f"/orgs/acme/containers/{LONG_ID}/events", "container_id"),
    "container_id_query_with_space": ("/orgs/acme/events?container_id=c%201", "container_id"),
    "container_id_query_too_long": (
        f"/orgs/acme/container_events/by_block?container_id={LONG_ID}",
        "container_id",
    ),
    "container_id_query_on_a_container": (f"{EVENTS_OF_C1}?container_id=c1", "container_id"),
}


@pytest.mark.parametrize(("target", "field"), BAD_LIST_TARGETS.values(), ids=BAD_LIST_TARGETS)
async def test_bad_ids_in_a_list_request_answer_400_naming_the_id(
    client, db, acme_key, target, field
):
    await make_events(db, "acme", [("c1", {})])

    assert_problem(await client.get(target, headers=auth(acme_key)), 400, field)


async def test_an_unencoded_plus_in_since_gets_a_hint_to_encode_it(client, acme_key):
    answer = await client.get(
        "/orgs/acme/events?since=2023-11-18T12:00:00+01:00", headers=auth(acme_key)
    )

    assert "%2B" in assert_problem(answer, 400, "since")["detail"]


async def test_a_128_character_id_is_valid(client, acme_key):
    path = f"/orgs/acme/containers/{'x' * 128}/events"

    answer = await client.post(path, json={"event_type": "ACCESS"}, headers=auth(acme_key))

    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/orgs",
        "/orgs/acme",
        "/orgs/acme/containers/c1",
        "/orgs/acme/container_events",
        "/orgs/acme/container_events/by_xyz",
        "/orgs/acme/container_events/by_ACCESS",
        "/orgs/acme/events/extra",
    ],
)
async def test_unknown_paths_answer_404_problem(client, acme_key, path):
    assert_problem(await client.get(path, headers=auth(acme_key)), 404)


async def test_posting_to_an_unknown_filter_answers_404_not_405(client, db, acme_key):
    answer = await client.post(
        "/orgs/acme/container_events/by_xyz", json={"event_type": "ACCESS"}, headers=auth(acme_key)
    )
    assert_problem(answer, 404)
    assert await count_events(db) == 0


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/orgs/acme/events", {"GET", "POST"}),
        ("DELETE", "/orgs/acme/events", {"GET", "POST"}),
        ("PUT", "/orgs/acme/container_events/by_access", {"GET"}),
        ("DELETE", EVENTS_OF_C1, {"GET", "POST"}),
        ("PATCH", EVENTS_OF_C1, {"GET", "POST"}),
    ],
)
async def test_wrong_method_answers_405_with_allow_header(
    client, db, acme_key, method, path, allowed
):
    answer = await client.request(
        method, path, json={"event_type": "ACCESS"}, headers=auth(acme_key)
    )

    assert_problem(answer, 405)
    assert allowed <= {part.strip() for part in answer.headers["allow"].split(",")}
    assert await count_events(db) == 0


async def test_an_internal_fault_answers_500_problem_without_a_stack_trace(
    app, acme_key, monkeypatch
):
    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internals: connection string postgres://u:p@db")

    monkeypatch.setattr(rest, "list_events", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answer = await client.get("/orgs/acme/events", headers=auth(acme_key))

    body = assert_problem(answer, 500)
    assert "secret internals" not in answer.text and "RuntimeError" not in answer.text
    assert "errors" not in body
