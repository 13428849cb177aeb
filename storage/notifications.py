"""Commit notices on PostgreSQL: which events a transaction stored, told to every listener.

The transaction that stores an org's events sends a notice on CHANNEL naming the id range it
inserted (storage.events.store_events). PostgreSQL delivers it to every session that LISTENs
on the channel, in every process sharing the database, when the transaction commits and only
if it does: a notice always names events that a reader can already see. The writing side and
the listening side share this one definition of the channel and the payload.
"""

from dataclasses import dataclass

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

CHANNEL = "events_gateway"


@dataclass(frozen=True)
class Committed:
    """An org's events with ids first_id to last_id (both included) are committed."""

    org_id: str
    first_id: int
    last_id: int


class InvalidNotice(ValueError):
    pass


def encode_committed(committed: Committed) -> str:
    """The payload of a notice: `{"org_id": "...", "first_id": N, "last_id": M}`."""
    return orjson.dumps(
        {
            "org_id": committed.org_id,
            "first_id": committed.first_id,
            "last_id": committed.last_id,
        }
    ).decode()


def decode_committed(payload: str) -> Committed:
    """The notice a payload carries, or InvalidNotice if it is not one."""
    try:
        values = orjson.loads(payload)
        org_id, first_id, last_id = values["org_id"], values["first_id"], values["last_id"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        raise InvalidNotice(f"not a commit notice: {payload!r}") from None
    if not (
        isinstance(org_id, str)
        and type(first_id) is int
        and type(last_id) is int
        and first_id <= last_id
    ):
        raise InvalidNotice(f"not a commit notice: {payload!r}")
    return Committed(org_id, first_id, last_id)


async def notify_committed(session: AsyncSession, committed: Committed) -> None:
    """Send the notice in the session's transaction: delivered at its commit, if it commits."""
    await session.execute(select(func.pg_notify(CHANNEL, encode_committed(committed))))
