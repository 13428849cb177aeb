"""The DateTime scalar: Strawberry's own, answering UTC times through orjson."""

import dataclasses
from datetime import UTC, datetime

import orjson
from strawberry.schema.types.scalar import DEFAULT_SCALAR_REGISTRY


def serialize_datetime(value: datetime) -> str:
    """value.isoformat(), in a third of the time for a UTC datetime (a page holds 200 of them)."""
    if type(value) is datetime and value.tzinfo is UTC:
        # For a UTC datetime, orjson writes exactly what isoformat() does: the same digits,
        # microseconds only when not zero, and "+00:00".
        return orjson.dumps(value)[1:-1].decode()
    return value.isoformat()


# Same name, description and input parsing as Strawberry's; a scalar type of its own.
DateTime = dataclasses.replace(
    DEFAULT_SCALAR_REGISTRY[datetime], serialize=serialize_datetime, implementation=None
)
