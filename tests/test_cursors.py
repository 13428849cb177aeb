"""Page cursors: opaque, stable, and the same from the fast event encoder as from the rule."""

import base64

import pytest

from storage.cursors import (
    InvalidCursor,
    decode_container_cursor,
    decode_event_cursor,
    encode_container_cursor,
    encode_event_cursor,
)

IDS = [0, 1, 9, 10, 99, 100, 12_345, 2**31, 2**53 + 1, 10**17, 10**18 - 1]


def by_the_rule(event_id: int) -> str:
    """What an event cursor is: 'e' and the id in decimal, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(f"e{event_id}".encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("event_id", [*IDS, *range(0, 3000, 7)])
def test_an_event_cursor_is_the_rules_and_reads_back(event_id):
    cursor = encode_event_cursor(event_id)
    assert cursor == by_the_rule(event_id)
    assert "=" not in cursor
    assert decode_event_cursor(cursor) == event_id


@pytest.mark.parametrize(
    "cursor", ["", "nope", by_the_rule(1)[:-1] + "!", encode_container_cursor("c1")]
)
def test_a_cursor_not_issued_for_events_is_refused(cursor):
    with pytest.raises(InvalidCursor):
        decode_event_cursor(cursor)


def test_a_container_cursor_reads_back():
    assert decode_container_cursor(encode_container_cursor("vault-1.a:b")) == "vault-1.a:b"
