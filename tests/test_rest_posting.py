"""REST shim, writing: POST bodies, defaults, the answer, containers registered on first use."""

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import orjson
import pytest

from tests.factories import auth, count_events, key_id_of
from tests.rest_assertions import assert_problem

EVENTS_OF_C1 = "/orgs/acme/containers/c1/events"
SPEC_EXAMPLE = {"event_type": "ACCESS", "timestamp": "2023-11-18T12:00:00Z", "status": "SUCCESS"}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
ONE_MIB = 1024 * 1024


def parse_utc(text: str) -> datetime:
    assert RFC3339_UTC.match(text), text
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    "body", [SPEC_EXAMPLE, {"event": SPEC_EXAMPLE}], ids=["bare", "wrapped_in_event"]
)
async def test_post_logs_the_spec_example_bare_or_wrapped(client, db, acme_key, body):
    answer = await client.post(EVENTS_OF_C1, json=body, headers=auth(acme_key))

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    logged = answer.json()
    assert set(logged) == {"message", "event"}
    assert logged["message"] == "Event logged successfully"
    event = logged["event"]
    assert isinstance(event["id"], int)
    parse_utc(event["received_at"])
    assert {key: value for key, value in event.items() if key not in ("id", "received_at")} == {
        "org_id": "acme",
        "container_id": "c1",
        "event_type": "ACCESS",
        "status": "SUCCESS",
        "timestamp": "2023-11-18T12:00:00Z",
        "actor": None,
        "details": {},
        "key_id": await key_id_of(db, acme_key),
    }
    assert await count_events(db) == 1


async def test_posted_event_is_listed_exactly_as_the_post_answered_it(client, acme_key):
    body = {**SPEC_EXAMPLE, "actor": "alice", "details": {"ip": "10.0.0.1", "tags": [1, "a"]}}
    posted = (await client.post(EVENTS_OF_C1, json=body, headers=auth(acme_key))).json()["event"]

    listed = (await client.get(EVENTS_OF_C1, headers=auth(acme_key))).json()["events"]

    assert listed == [posted]
    assert posted["actor"] == "alice"
    assert posted["details"] == {"ip": "10.0.0.1", "tags": [1, "a"]}


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ({"event_type": "access", "status": "failure"}, ("ACCESS", "FAILURE")),
        ({"event_type": "Block", "status": "Success"}, ("BLOCK", "SUCCESS")),
        ({"event_type": "eXpIrE"}, ("EXPIRE", "SUCCESS")),
    ],
)
async def test_event_type_and_status_match_without_regard_to_case(client, acme_key, sent, stored):
    answer = await client.post(EVENTS_OF_C1, json=sent, headers=auth(acme_key))

    event = answer.json()["event"]
    assert (event["event_type"], event["status"]) == stored


async def test_lowercase_failure_is_listed_by_fail(client, acme_key):
    await client.post(
        EVENTS_OF_C1, json={"event_type": "access", "status": "failure"}, headers=auth(acme_key)
    )

    answer = await client.get("/orgs/acme/container_events/by_fail", headers=auth(acme_key))

    assert [event["status"] for event in answer.json()["events"]] == ["FAILURE"]


async def test_status_defaults_to_success(client, acme_key):
    answer = await client.post(EVENTS_OF_C1, json={"event_type": "CREATE"}, headers=auth(acme_key))

    assert answer.json()["event"]["status"] == "SUCCESS"


async def test_timestamp_defaults_to_now(client, acme_key):
    before = datetime.now(UTC)
    answer = await client.post(EVENTS_OF_C1, json={"event_type": "CREATE"}, headers=auth(acme_key))
    after = datetime.now(UTC)

    assert before <= parse_utc(answer.json()["event"]["timestamp"]) <= after


@pytest.mark.parametrize(
    "timestamp",
    [
        "2023-11-18T12:00:00Z",
        "2023-11-18t12:00:00z",
        "2023-11-18 12:00:00+00:00",
        "2023-11-18T13:00:00+01:00",
        "2023-11-18T11:00:00-01:00",
    ],
)
async def test_any_rfc_3339_timestamp_is_accepted(client, acme_key, timestamp):
    body = {"event_type": "ACCESS", "timestamp": timestamp}

    answer = await client.post(EVENTS_OF_C1, json=body, headers=auth(acme_key))

    assert answer.json()["event"]["timestamp"] == "2023-11-18T12:00:00Z"


async def test_fractional_seconds_are_kept_to_the_microsecond(client, acme_key):
    body = {"event_type": "ACCESS", "timestamp": "2023-11-18T12:00:00.123456Z"}

    answer = await client.post(EVENTS_OF_C1, json=body, headers=auth(acme_key))

    assert answer.json()["event"]["timestamp"] == "2023-11-18T12:00:00.123456Z"


async def test_timestamp_with_an_offset_is_answered_in_utc(client, acme_key):
    body = {"event_type": "ACCESS", "timestamp": "2023-11-18T14:30:00+02:30"}

    answer = await client.post(EVENTS_OF_C1, json=body, headers=auth(acme_key))

    assert answer.json()["event"]["timestamp"] == "2023-11-18T12:00:00Z"


async def test_null_actor_and_details_are_accepted_as_absent(client, acme_key):
    body = {"event_type": "ACCESS", "actor": None, "details": None}

    answer = await client.post(EVENTS_OF_C1, json=body, headers=auth(acme_key))

    assert (answer.json()["event"]["actor"], answer.json()["event"]["details"]) == (None, {})


async def test_received_at_is_the_server_clock_not_the_clients_timestamp(client, acme_key):
    before = datetime.now(UTC)
    answer = await client.post(EVENTS_OF_C1, json=SPEC_EXAMPLE, headers=auth(acme_key))

    assert parse_utc(answer.json()["event"]["received_at"]) >= before


async def test_later_posts_get_larger_ids(client, acme_key):
    ids = []
    for _ in range(3):
        answer = await client.post(EVENTS_OF_C1, json=SPEC_EXAMPLE, headers=auth(acme_key))
        ids.append(answer.json()["event"]["id"])

    assert ids == sorted(ids) and len(set(ids)) == 3


async def test_first_post_registers_the_container(client, acme_key):
    path = "/orgs/acme/containers/fresh-box:1/events"
    assert_problem(await client.get(path, headers=auth(acme_key)), 404)

    posted = await client.post(path, json=SPEC_EXAMPLE, headers=auth(acme_key))

    listed = await client.get(path, headers=auth(acme_key))
    assert listed.status_code == 200
    assert listed.json()["events"] == [posted.json()["event"]]
    assert posted.json()["event"]["container_id"] == "fresh-box:1"


async def test_details_up_to_16_kib_are_stored_whole(client, acme_key):
    details = {"blob": "x" * (16 * 1024 - len('{"blob":""}'))}

    answer = await client.post(
        EVENTS_OF_C1, json={"event_type": "ACCESS", "details": details}, headers=auth(acme_key)
    )

    assert answer.status_code == 200, answer.text
    assert answer.json()["event"]["details"] == details


def body_over_one_mib() -> bytes:
    return orjson.dumps({"event_type": "ACCESS", "details": {"blob": "x" * ONE_MIB}})


async def test_a_body_over_one_mib_answers_413_and_stores_nothing(client, db, acme_key):
    answer = await client.post(EVENTS_OF_C1, content=body_over_one_mib(), headers=auth(acme_key))

    assert_problem(answer, 413)
    assert await count_events(db) == 0


async def test_a_streamed_body_over_one_mib_answers_413_without_content_length(
    client, db, acme_key
):
    body = body_over_one_mib()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    answer = await client.post(EVENTS_OF_C1, content=chunks(), headers=auth(acme_key))

    assert "content-length" not in answer.request.headers
    assert_problem(answer, 413)
    assert await count_events(db) == 0


@pytest.mark.parametrize(
    "details",
    [
        {"nested": {"deep": [{"a": None}, True, 1.5, -7]}},
        {"unicode": "zäh ✓ 🚀", "emptykey": {"": ""}},
        {"nul_in_text": "a\u0000b", "nul\u0000key": 1},
        {"big": 9007199254740993, "small": -(2**63)},
    ],
    ids=["nested", "unicode", "nul_characters", "large_integers"],
)
async def test_any_json_object_in_details_comes_back_unchanged(client, acme_key, details):
    body = {"event_type": "ACCESS", "actor": "zoë ✓", "details": details}

    posted = await client.post(EVENTS_OF_C1, json=body, headers=auth(acme_key))
    listed = await client.get(EVENTS_OF_C1, headers=auth(acme_key))

    assert posted.status_code == 200, posted.text
    assert posted.json()["event"]["details"] == details
    assert listed.json()["events"][0]["details"] == details
    assert listed.json()["events"][0]["actor"] == "zoë ✓"


# JSON bodies are parsed by orjson, which would make these floats and so change them silently.
WIDE_INTEGERS = [b"18446744073709551616", b"-9223372036854775809", b"1" + b"0" * 40]


@pytest.mark.parametrize("number", WIDE_INTEGERS, ids=["2^64", "-2^63-1", "10^40"])
async def test_an_integer_beyond_64_bits_in_details_is_refused_and_nothing_stored(
    client, db, acme_key, number
):
    body = b'{"event_type": "ACCESS", "details": {"n": [1, ' + number + b"]}}"

    answer = await client.post(
        EVENTS_OF_C1, content=body, headers={**auth(acme_key), "Content-Type": "application/json"}
    )

    problem = assert_problem(answer, 400, "details")
    assert "beyond 64 bits" in problem["errors"][0]["message"]
    assert await count_events(db) == 0


async def test_integers_at_the_64_bit_limits_and_long_digit_strings_are_kept_exactly(
    client, acme_key
):
    body = (
        b'{"event_type": "ACCESS", "details": {"most": 18446744073709551615,'
        b' "least": -9223372036854775808, "text": "123456789012345678901234567890"}}'
    )

    posted = await client.post(
        EVENTS_OF_C1, content=body, headers={**auth(acme_key), "Content-Type": "application/json"}
    )
    listed = await client.get(EVENTS_OF_C1, headers=auth(acme_key))

    assert posted.status_code == 200, posted.text
    expected = {"most": 2**64 - 1, "least": -(2**63), "text": "123456789012345678901234567890"}
    assert listed.json()["events"][0]["details"] == expected


@pytest.mark.parametrize("path", ["/orgs/acme/containers/c1/events", "/graphql"])
async def test_a_client_that_leaves_before_its_body_arrives_is_no_server_fault(
    app, db, acme_key, caplog, path
):
    # What uvicorn hands the app when a client disconnects mid-request (as wrk does at the end
    # of a run): the handler's body read raises, and nothing may be stored or logged as a fault.
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {acme_key}".encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    sent = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)

    assert sent[0]["status"] == 400
    assert await count_events(db) == 0
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
