"""Group commit: concurrent writes share one transaction, and each is answered after it.

A request hands its events to the `EventWriter` and waits. One writer task at a time takes
every write queued so far, stores them in one transaction, commits once, then wakes each
request with its rows; writes that arrive meanwhile form the next group. A commit costs a
disk flush, so a hundred writers waiting on one flush are about a hundred times faster than
a hundred flushes, and no request is answered before its events are committed.

Each write is all or nothing on its own: if a group's transaction fails, its writes are
retried one transaction each, so a write that cannot be stored fails alone. A write with an
idempotency key (storage.idempotency) takes its key in the transaction that stores it.

A commit that fails may have landed all the same: the connection can drop after the database
committed and before its answer arrived (a failover, a proxy restart). Retrying then would
store the writes twice, so a failure during the commit is resolved first, on a fresh session:
is the transaction's first event stored (storage.events.is_committed)? If so, its writes are
answered with their rows and announced, once; if not, retried as above, and each retry's own
commit is resolved the same way. A failure before the commit stored nothing and is retried
at once. When the database cannot be asked within RESOLVE_SECONDS, the writes fail with
WriteOutcomeUnknown: they may have been stored, and only a retry with an idempotency key can
tell. The same holds without group commit, for a request's own transaction.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import NamedTuple

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.domain import NewEvent
from storage.events import EventRecord, is_committed, store_events
from storage.idempotency import (
    Idempotency,
    IdempotencyKeyInFlight,
    prune_keys,
    record_key,
    stored_answer,
)
from storage.models import utcnow

logger = logging.getLogger(__name__)

Sessions = Callable[[], AbstractAsyncContextManager[AsyncSession]]

# A group stops growing once it holds this many events (a larger single write goes alone).
MAX_GROUP_EVENTS = 10_000
# Expired idempotency keys are deleted by the first write this long after the last pruning.
PRUNE_EVERY_SECONDS = 60.0
# How long the writer keeps asking whether a failed commit landed (pausing between attempts,
# from the first pause on, doubling) before its writes fail with WriteOutcomeUnknown.
RESOLVE_SECONDS = 2.0
RESOLVE_FIRST_PAUSE_SECONDS = 0.1


class WriteOutcomeUnknown(Exception):
    """A write's commit failed and the database could not be asked whether it landed: its
    events may have been stored."""

    def __init__(self) -> None:
        super().__init__(
            "the database did not confirm the commit and could not be asked whether it "
            "landed: the events may have been stored"
        )


class Logged(NamedTuple):
    rows: list[EventRecord]
    replayed: bool  # the answer of an earlier write with the same idempotency key


@dataclass
class _Write:
    org_id: str
    items: Sequence[tuple[str, NewEvent]]
    idempotency: Idempotency | None = None
    key_id: str | None = None  # the API key writing them
    stored: asyncio.Future[list[EventRecord]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def answer(self, rows: list[EventRecord]) -> None:
        if not self.stored.done():  # its request may have been cancelled meanwhile
            self.stored.set_result(rows)

    def fail(self, error: BaseException) -> None:
        if not self.stored.done():
            self.stored.set_exception(error)


class EventWriter:
    """Stores events for requests, in shared transactions (group commit) or, with
    `group_commit=False`, one transaction per request in the request's own task (kept to
    measure what group commit gains)."""

    def __init__(self, sessions: Sessions, *, group_commit: bool = True) -> None:
        self._sessions = sessions
        self.group_commit = group_commit
        self._queue: deque[_Write] = deque()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[tuple[str, str]] = set()  # (org_id, idempotency key)
        self._pruned_at = -PRUNE_EVERY_SECONDS
        # Called with (org_id, rows) once a write's rows are committed (storage.broker).
        self.on_commit: list[Callable[[str, list[EventRecord]], None]] = []
        # Called with the number of events each transaction committed (gateway.ops' metrics).
        self.on_transaction: list[Callable[[int], None]] = []

    async def log(
        self,
        org_id: str,
        items: Sequence[tuple[str, NewEvent]],
        idempotency: Idempotency | None = None,
        *,
        key_id: str | None = None,
    ) -> Logged:
        """Store (container_id, event) pairs, all or nothing, as written with the API key
        `key_id` (None: none); their rows once committed.

        With an idempotency key already used for the same request, nothing is stored and the
        rows are those stored then. Raises IdempotencyKeyReused (another request used the key)
        or IdempotencyKeyInFlight (the first request with it is not answered yet).
        """
        if idempotency is None:
            return Logged(await self._store(_Write(org_id, items, key_id=key_id)), False)
        taken = (org_id, idempotency.key)
        if taken in self._in_flight:
            raise IdempotencyKeyInFlight(idempotency.key)
        self._in_flight.add(taken)
        try:
            if (rows := await self._stored_answer(org_id, idempotency)) is not None:
                return Logged(rows, replayed=True)
            try:
                write = _Write(org_id, items, idempotency, key_id)
                return Logged(await self._store(write), replayed=False)
            except IntegrityError:
                # Another process took the key first: answer what it stored.
                if (rows := await self._stored_answer(org_id, idempotency)) is None:
                    raise
                return Logged(rows, replayed=True)
        finally:
            self._in_flight.discard(taken)

    async def _stored_answer(
        self, org_id: str, idempotency: Idempotency
    ) -> list[EventRecord] | None:
        async with self._sessions() as session:
            return await stored_answer(session, org_id, idempotency)

    async def _store(self, write: _Write) -> list[EventRecord]:
        if not self.group_commit:
            [rows] = await self._transact([write])
            return rows
        self._queue.append(write)
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        # The request waits; if it is cancelled, the write still commits (as it would have
        # inside the request), and a retry with an idempotency key will not double it.
        return await asyncio.shield(write.stored)

    async def drain(self) -> None:
        """Wait until every queued write is committed or failed."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        try:
            while self._queue:
                await self._commit(self._take_group())
        finally:
            # Only reached with an empty queue, or when cancelled: then nothing more will
            # be stored, and the writes still queued must not wait forever.
            self._task = None
            while self._queue:
                self._queue.popleft().fail(RuntimeError("the event writer stopped"))

    def _take_group(self) -> list[_Write]:
        group = [self._queue.popleft()]
        size = len(group[0].items)
        while self._queue and size + len(self._queue[0].items) <= MAX_GROUP_EVENTS:
            size += len(self._queue[0].items)
            group.append(self._queue.popleft())
        return group

    async def _commit(self, group: list[_Write]) -> None:
        try:
            try:
                await self._transact(group)
            except WriteOutcomeUnknown as unknown:
                for write in group:
                    write.fail(unknown)
            except Exception:
                # One write the database refuses must not sink the others: each alone.
                for write in group:
                    try:
                        await self._transact([write])
                    except Exception as error:
                        write.fail(error)  # a no-op if it was answered before a failed release
        except asyncio.CancelledError:
            # Stopped mid-transaction, perhaps mid-commit: the unanswered may have been stored.
            for write in group:
                write.fail(WriteOutcomeUnknown())
            raise

    async def _transact(self, group: list[_Write]) -> list[list[EventRecord]]:
        """Store a group in one transaction and commit it, then answer and announce each
        write; each write's rows. Raises the database's error if nothing was stored, or
        WriteOutcomeUnknown if the commit failed and whether it landed cannot be told."""
        stored: list[list[EventRecord]] | None = None
        committed = False
        try:
            async with self._sessions() as session:
                now = utcnow()
                if time.monotonic() - self._pruned_at >= PRUNE_EVERY_SECONDS:
                    await prune_keys(session, now)
                    self._pruned_at = time.monotonic()
                stored = await _store_group(session, group, now)
                try:
                    await session.commit()
                except Exception:
                    # The connection's state is unknown (SQLite may keep the transaction open,
                    # and back in the pool it would join the next one): close it, never reuse.
                    await session.invalidate()
                    raise
                committed = True
                # Answered and announced at once: the session's release is another round trip
                # to the database thread, and subscribers should not wait for it.
                self._committed(group, stored)
        except Exception:
            if committed:
                # Releasing the session failed after the commit: the writes are stored and
                # answered, and storing them again would double them.
                logger.exception("releasing the writer's session failed after its commit")
            elif stored is None or not await self._landed(stored):
                raise  # nothing was stored: the commit, if it was sent, did not land
            else:
                logger.warning("a commit that failed had landed: answering its writes")
                self._committed(group, stored)
        assert stored is not None
        return stored

    async def _landed(self, stored: list[list[EventRecord]]) -> bool:
        """Whether the failed commit of the transaction that wrote `stored` landed, asked on
        fresh sessions for up to RESOLVE_SECONDS; WriteOutcomeUnknown if it cannot be told."""
        first = next((rows[0] for rows in stored if rows), None)
        if first is None:
            return True  # no event: there is nothing to store twice, and nothing lost
        pause = RESOLVE_FIRST_PAUSE_SECONDS
        try:
            async with asyncio.timeout(RESOLVE_SECONDS):
                while True:
                    try:
                        async with self._sessions() as session:
                            return await is_committed(
                                session, first, lock_timeout=RESOLVE_SECONDS / 2
                            )
                    except Exception:
                        logger.warning(
                            "could not ask whether a failed commit landed; retrying", exc_info=True
                        )
                    await asyncio.sleep(pause)
                    pause *= 2
        except TimeoutError:
            pass
        logger.error("could not tell whether a failed commit landed")
        raise WriteOutcomeUnknown()

    def _committed(self, group: list[_Write], stored: list[list[EventRecord]]) -> None:
        """Observe a committed transaction's size, then answer and announce each write."""
        for observe in self.on_transaction:
            try:
                observe(sum(len(rows) for rows in stored))
            except Exception:  # committed: a failing hook must not make it look otherwise
                logger.exception("a transaction hook failed")
        for write, rows in zip(group, stored, strict=True):
            write.answer(rows)
            self._announce(write, rows)

    def _announce(self, write: _Write, rows: list[EventRecord]) -> None:
        """Tell the commit hooks (storage.broker) that a write's rows are committed; a hook
        that fails is logged, and never fails the write."""
        for announce in self.on_commit:
            try:
                announce(write.org_id, rows)
            except Exception:
                logger.exception("a commit hook failed")


async def _store_group(
    session: AsyncSession, group: list[_Write], now: datetime
) -> list[list[EventRecord]]:
    """Write a group's events and keys in the session's transaction, one statement set per org
    (in org order, so two processes' groups lock rows in the same order); each write's rows."""
    rows_of: dict[int, list[EventRecord]] = {}
    by_org = sorted(range(len(group)), key=lambda index: group[index].org_id)
    for org_id, indexes in groupby(by_org, key=lambda index: group[index].org_id):
        members = list(indexes)
        items = [item for index in members for item in group[index].items]
        key_ids = [group[index].key_id for index in members for _item in group[index].items]
        rows = await store_events(session, org_id=org_id, items=items, key_ids=key_ids)
        start = 0
        for index in members:
            end = start + len(group[index].items)
            rows_of[index] = rows[start:end]
            start = end
            if (idempotency := group[index].idempotency) is not None:
                await record_key(session, org_id, idempotency, rows_of[index], now)
    return [rows_of[index] for index in range(len(group))]
