"""Large JSON batch bodies are read a slice at a time (storage.domain.load_json_array), with
exactly load_json's outcome: the same values, or JSONDecodeError where it raises one."""

import asyncio
import math
import operator
import sys
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.rest import _ndjson_lines
from storage.domain import SLICED_ABOVE_BYTES, load_json, load_json_array
from tests.factories import auth, count_events
from tests.rest_assertions import assert_problem

# One event of about 3 KiB; a few hundred of them push a body past SLICED_ABOVE_BYTES.
FILLER = orjson.dumps(
    {
        "container_id": "c1",
        "event_type": "ACCESS",
        "timestamp": "2023-11-18T12:00:00Z",
        "details": {"note": "x" * 3000},
    }
)


def padded(item: bytes, *, before: int = 400, after: int = 400) -> bytes:
    """An array of `item` between fillers, larger than SLICED_ABOVE_BYTES."""
    body = b"[" + b",".join([FILLER] * before + [item] + [FILLER] * after) + b"]"
    assert len(body) > SLICED_ABOVE_BYTES
    return body


def typed(value: Any) -> Any:
    """A value with its types spelled out, so 1 and 1.0, or 0.0 and -0.0, compare unequal."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    if isinstance(value, float):
        return ("float", math.copysign(1, value), repr(value))
    return (type(value).__name__, value)


def outcome(parse: Any) -> Any:
    """What parse() gives (parsed under Python's own recursion limit), with its types."""
    try:
        value = parse()
    except orjson.JSONDecodeError:
        return "JSONDecodeError"
    return deep(typed, value)


def deep(function: Any, *args: Any) -> Any:
    """function(*args) with room to recurse through items nested 1,000 deep."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        return function(*args)
    finally:
        sys.setrecursionlimit(limit)


def assert_same_as_load_json(body: bytes) -> None:
    expected = outcome(lambda: load_json(body))
    got = outcome(lambda: asyncio.run(load_json_array(body)))
    assert deep(operator.eq, got, expected)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# Items on which the standard library's scanner and orjson may read differently, or not at all.
EDGE_ITEMS = [
    b'{"a": 1}',
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b'{"x": NaN}',
    b"1e400",
    b"-1e400",
    b"1.7976931348623157e308",
    b"5e-324",
    b"-0.0",
    b"-0",
    b"0.1",
    b"12345678901234567890",  # above 64 bits signed, within unsigned
    b"18446744073709551616",  # 2**64
    b"-9223372036854775809",  # below -(2**63)
    b"123456789012345678901234567890",
    b'"\\ud83d\\ude00"',  # an escaped surrogate pair
    b'"\\ud83d"',  # a lone surrogate
    b'"\\udc00x"',
    b'"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"',
    b'"\x01"',  # a raw control character
    b'"tab\there"',
    b"true",
    b"null",
    b"[]",
    b"{}",
    b"01",
    b"1.",
    b".5",
    b"+1",
    b"'single'",
    b'{"a": 1,}',
    b"[1,]",
    nested(200),
    nested(990),
    nested(1010),
    nested(1030),
]


@pytest.mark.parametrize("item", EDGE_ITEMS, ids=lambda item: repr(item[:24]))
def test_a_large_array_reads_as_load_json_reads_it_whatever_an_item_holds(item):
    assert_same_as_load_json(b"[" + item + b"]")  # small: load_json itself
    assert_same_as_load_json(padded(item))
    assert_same_as_load_json(padded(item, before=0))
    assert_same_as_load_json(padded(item, after=0))


@pytest.mark.parametrize(
    "body",
    [
        padded(b"1") + b" junk",
        padded(b"1") + b",",
        padded(b"1")[:-1],  # no closing bracket
        padded(b"1")[:-1] + b",]",  # a trailing comma
        padded(b"1").replace(b"},{", b"}{", 1),  # a missing comma
        b"\xef\xbb\xbf" + padded(b"1"),  # a byte-order mark
        padded(b'"\xff"'),  # invalid UTF-8
        padded(b'"\xc3"'),  # a truncated sequence
        b" \n\t" + padded(b"1") + b"\r\n ",  # JSON whitespace around it
        b"\x0c" + padded(b"1"),  # form feed: whitespace to Python, not to JSON
        b"{" + b'"a": ' + padded(b"1") + b"}",  # an object, not an array
        b"[" + b"," * (SLICED_ABOVE_BYTES + 1) + b"]",
        b"[" + b" " * (SLICED_ABOVE_BYTES + 1) + b"]",
    ],
    ids=lambda body: repr(body[:4] + body[-12:]),
)
def test_a_large_body_that_is_no_plain_array_gets_load_jsons_answer(body):
    assert len(body) > SLICED_ABOVE_BYTES
    assert_same_as_load_json(body)


def test_a_multibyte_character_split_by_a_slice_boundary_reads_whole():
    # Characters of 2, 3 and 4 bytes, repeated so that some straddle every 1 MiB boundary.
    text = "é€😀" * 300_000
    body = orjson.dumps([text, {"k": text[:7]}])
    assert len(body) > 2 * SLICED_ABOVE_BYTES
    assert asyncio.run(load_json_array(body)) == [text, {"k": text[:7]}]
    assert_same_as_load_json(body)


def test_a_large_array_gives_the_event_loop_turns_while_it_is_read():
    body = b"[" + b",".join([FILLER] * 3000) + b"]"  # about 9 MiB
    turns = 0

    async def main() -> list[Any]:
        nonlocal turns
        reading = asyncio.ensure_future(load_json_array(body))
        while not reading.done():
            turns += 1
            await asyncio.sleep(0)
        return reading.result()

    items = asyncio.run(main())
    assert items == load_json(body)
    assert turns >= 8  # a turn at least per MiB decoded and per MiB of items


@given(
    st.lists(
        st.sampled_from([b"{}", b"a", b"\n", b"\r", b"\r\n", b" ", b"\t", b"\x0c"]), max_size=14
    )
)
def test_ndjson_lines_are_cut_where_splitlines_cuts_them(pieces):
    body = b"".join(pieces)
    assert list(_ndjson_lines(body)) == [line for line in body.splitlines() if line.strip()]


# Over HTTP: a large batch is refused as a small one is, and stores nothing.


def large_batch(bad: bytes) -> bytes:
    return padded(bad, before=400, after=0)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (b'{"container_id": "c1", "event_type": "ACCESS", "details": {"n": NaN}}', "body"),
        (b'{"container_id": "c1", "event_type": "ACCESS", "details": {"n": 1e400}}', "body"),
        (
            b'{"container_id": "c1", "event_type": "ACCESS", '
            b'"details": {"n": 18446744073709551616}}',
            "[400].details",
        ),
    ],
    ids=["NaN", "1e400", "2**64"],
)
async def test_a_bad_value_deep_in_a_large_batch_is_refused_as_in_a_small_one(
    client, db, acme_key, item, field
):
    answers = []
    for body in (b"[" + item + b"]", large_batch(item)):
        answer = await client.post(
            "/orgs/acme/events",
            content=body,
            headers={**auth(acme_key), "Content-Type": "application/json"},
        )
        answers.append(assert_problem(answer, 400))

    small, large = answers
    fields = {error["field"] for error in large["errors"]}
    assert field in fields, large
    if field == "body":
        assert small["errors"] == large["errors"]
    else:  # the same message, named by the bad item's own index in each batch
        assert [error["message"] for error in small["errors"]] == [
            error["message"] for error in large["errors"]
        ]
    assert await count_events(db) == 0


async def test_a_large_valid_batch_is_stored_whole(client, db, acme_key):
    body = large_batch(FILLER)
    answer = await client.post(
        "/orgs/acme/events",
        content=body,
        headers={**auth(acme_key), "Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["count"] == 401
    assert await count_events(db) == 401
