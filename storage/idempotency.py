"""Idempotency keys: a retried write answers what the first did, and stores nothing new.

A write may carry a key (1-255 visible ASCII characters, scoped to its org). The key is
recorded, with a digest of what was asked and the ids of the events stored, in the same
transaction as those events (storage.writer), so it is taken exactly when they exist. A
retry with the same key and the same request replays the stored events; the same key with
another request is refused; a retry that arrives while the first is still being written is
refused too, and can be retried once that one is answered. Keys are kept at least
KEEP_KEYS, then pruned.
"""

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.domain import NewEvent
from storage.events import EventRecord, event_record
from storage.models import events, idempotency_keys

KEEP_KEYS = timedelta(hours=24)
KEY_RULE = "must be 1 to 255 visible ASCII characters"
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


class InvalidIdempotencyKey(ValueError):
    pass


class IdempotencyKeyReused(Exception):
    """The key was first used for a different request."""


class IdempotencyKeyInFlight(Exception):
    """The first request with this key is still being written."""


@dataclass(frozen=True)
class Idempotency:
    key: str
    digest: str  # of what was asked: the same key must come with the same request


def idempotency(
    key: str | None, kind: str, items: Sequence[tuple[str, NewEvent]]
) -> Idempotency | None:
    """The key of a write of `kind` ("event" or "batch"), None without one.

    The digest covers the events as validated, so a retry whose JSON differs only in
    spacing or key order is the same request.
    """
    if key is None:
        return None
    if not _KEY.fullmatch(key):
        raise InvalidIdempotencyKey(KEY_RULE)
    asked = [kind, [[container_id, _asked(event)] for container_id, event in items]]
    digest = hashlib.sha256(orjson.dumps(asked, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return Idempotency(key, digest)


def _asked(event: NewEvent) -> dict[str, object]:
    """The event as asked: a timestamp the server filled in (now) differs on every retry, so
    it is left out unless the client gave one."""
    # The event's own fields: a batch's items also carry their container_id.
    fields = event.model_dump(mode="json", include=set(NewEvent.model_fields))
    if "timestamp" not in event.model_fields_set:
        del fields["timestamp"]
    return fields


async def stored_answer(
    session: AsyncSession, org_id: str, idempotency: Idempotency
) -> list[EventRecord] | None:
    """The events stored under this key (in the order first asked), or None if it is unused.

    Raises IdempotencyKeyReused if the key was used for another request.
    """
    found = (
        await session.execute(
            select(idempotency_keys.c.request_digest, idempotency_keys.c.event_ids).where(
                idempotency_keys.c.org_id == org_id, idempotency_keys.c.key == idempotency.key
            )
        )
    ).first()
    if found is None:
        return None
    digest, event_ids = found
    if digest != idempotency.digest:
        raise IdempotencyKeyReused(idempotency.key)
    rows = await session.execute(
        select(events).where(events.c.org_id == org_id, events.c.id.in_(event_ids))
    )
    by_id = {row.id: event_record(row._mapping) for row in rows}
    return [by_id[event_id] for event_id in event_ids]


async def record_key(
    session: AsyncSession,
    org_id: str,
    idempotency: Idempotency,
    stored: Sequence[EventRecord],
    now: datetime,
) -> None:
    """Take the key for these just-stored events, in their transaction (a key already taken
    fails it with an IntegrityError)."""
    await session.execute(
        idempotency_keys.insert().values(
            org_id=org_id,
            key=idempotency.key,
            request_digest=idempotency.digest,
            event_ids=[row["id"] for row in stored],
            created_at=now,
        )
    )


async def prune_keys(session: AsyncSession, now: datetime) -> None:
    """Forget keys older than KEEP_KEYS."""
    await session.execute(
        delete(idempotency_keys).where(idempotency_keys.c.created_at < now - KEEP_KEYS)
    )
