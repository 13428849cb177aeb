"""The `next` messages of subscriptions, each result's data encoded once for all the
subscribers it goes to (gateway.graphql.SharedResults), read exactly as the whole message
encoded on its own."""

from datetime import UTC, datetime

import orjson

from gateway.graphql import SharedResults
from gateway.responses import dumps

EVENT = {
    "containerEvents": {
        "id": "17",
        "timestamp": datetime(2023, 11, 18, 12, 0, 5, 250, tzinfo=UTC),
        "actor": None,
        "details": {"note": 'quotes " and ünïcode', "n": [1, 2.5]},
    }
}


def test_each_subscribers_message_reads_as_the_message_encoded_whole():
    shared = SharedResults()
    messages = [
        {"id": operation_id, "type": "next", "payload": {"data": EVENT}}
        for operation_id in ("1", "2", 'odd "id"', "ünï")
    ]

    texts = [shared.text(message) for message in messages]

    assert texts == [dumps(message).decode() for message in messages]
    assert [orjson.loads(text)["id"] for text in texts] == ["1", "2", 'odd "id"', "ünï"]


def test_other_messages_and_results_with_errors_are_encoded_whole():
    shared = SharedResults()
    messages = [
        {"id": "1", "type": "next", "payload": {"data": None, "errors": [{"message": "x"}]}},
        {"id": "1", "type": "next", "payload": {"data": EVENT, "extensions": {"a": 1}}},
        {"id": "1", "type": "complete"},
        {"type": "connection_ack"},
        {"type": "next", "id": "1", "payload": {"data": EVENT}},  # keys in another order
    ]

    assert [shared.text(message) for message in messages] == [
        dumps(message).decode() for message in messages
    ]


def test_a_new_result_is_never_mistaken_for_an_older_one():
    shared = SharedResults(kept=2)
    results = [{"containerEvents": {"id": str(number)}} for number in range(5)]

    for result in results * 2:
        message = {"id": "1", "type": "next", "payload": {"data": result}}
        assert shared.text(message) == dumps(message).decode()
    # A result built after the others were dropped, maybe at a recycled address.
    fresh = {"containerEvents": {"id": "new"}}
    assert shared.text({"id": "1", "type": "next", "payload": {"data": fresh}}) == (
        '{"id":"1","type":"next","payload":{"data":{"containerEvents":{"id":"new"}}}}'
    )
