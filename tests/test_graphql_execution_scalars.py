"""The gateway's DateTime scalar answers exactly what Strawberry's does: value.isoformat()."""

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
import strawberry

from schema.scalars import DateTime, serialize_datetime

EDGES = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(2023, 11, 18, 12, 0, tzinfo=UTC),
    datetime(2023, 11, 18, 12, 0, 0, 1, tzinfo=UTC),
    datetime(2023, 11, 18, 12, 0, 0, 120000, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2023, 11, 18, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2023, 11, 18, 12, 0, tzinfo=timezone(timedelta(hours=-1, seconds=-15))),
    datetime(2023, 11, 18, 12, 0, tzinfo=timezone(timedelta(0), "UTC")),
    datetime(2023, 11, 18, 12, 0, 0, 5),
]


def random_utc_times(count: int) -> list[datetime]:
    draw = random.Random(20231118)
    return [
        datetime(1, 1, 1, tzinfo=UTC)
        + timedelta(
            days=draw.randrange(3_652_059),
            seconds=draw.randrange(86_400),
            microseconds=draw.choice([0, draw.randrange(1_000_000), draw.randrange(10) * 1000]),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize("value", EDGES, ids=str)
def test_each_edge_answers_as_isoformat(value):
    assert serialize_datetime(value) == value.isoformat()


def test_utc_times_across_the_calendar_answer_as_isoformat():
    for value in random_utc_times(20_000):
        assert serialize_datetime(value) == value.isoformat()


def test_a_datetime_field_answers_isoformat_text_and_parses_input_as_before():
    @strawberry.type
    class Query:
        @strawberry.field
        def echo(self, at: datetime) -> list[datetime]:
            return [at, at.astimezone(UTC)]

    schema = strawberry.Schema(query=Query, scalar_overrides={datetime: DateTime})

    result = schema.execute_sync('{ echo(at: "2023-11-18T12:00:00.5+05:30") }')

    assert result.errors is None
    assert result.data == {
        "echo": ["2023-11-18T12:00:00.500000+05:30", "2023-11-18T06:30:00.500000+00:00"]
    }
