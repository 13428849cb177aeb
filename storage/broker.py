"""Live fan-out: wake an org's subscribers when its events are committed.

A notice only says "org X has new committed events, up to id M"; it carries no rows. Each
subscriber keeps the id of the last event it delivered and, when woken, reads what follows
it. Replay and live delivery are then one code path, a lost or repeated notice costs a read
and never an event, and a burst of commits coalesces into one wake-up.

What follows it is read once per process, not once per subscriber: an org's subscribers
share a Tail, which reads the org's new events after each notice, keeps the newest in
memory and then wakes them. A subscriber behind what the tail holds (a replay from an old
cursor, or one that fell behind) reads the database itself until it reaches the tail.

On SQLite (one process writes the file) the event writer announces each commit. On
PostgreSQL every inserting transaction sends a notice (storage.notifications) that all
processes sharing the database receive; a dedicated connection listens for it and feeds the
broker. After that connection is lost and restored, every subscriber is woken, since notices
sent meanwhile are gone.
"""

import asyncio
import logging
from bisect import bisect_left, bisect_right
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from itertools import accumulate
from typing import Any

import asyncpg
import orjson

from storage.database import Database
from storage.domain import EventFilter, Order
from storage.driver import asyncpg_dsn
from storage.events import EventRecord, Page, event_matches, list_events
from storage.notifications import CHANNEL, InvalidNotice, decode_committed

logger = logging.getLogger(__name__)

# Subscribers also re-read this often unprompted: a safety net for notices that cannot
# arrive (another process writing the same SQLite file, a listener reconnecting).
POLL_SECONDS = 5.0
RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
FOLLOW_PAGE_SIZE = 500
# A read of the database for subscribers asks for about this much at a time (by the size of
# the events it read last, between 1 and FOLLOW_PAGE_SIZE events), starting at
# FIRST_PAGE_SIZE: an event with 16 KiB of details may take ~200 KB once decoded.
PAGE_BYTES = 1024 * 1024
FIRST_PAGE_SIZE = 20
# Events a subscriber sends before it lets the rest of the process take a turn.
TURN_EVENTS = 20
# A subscriber that has not caught up while this many of its org's events were committed is
# ended (SUBSCRIBER_TOO_SLOW). Ten full batches: a burst of batch ingest does not end a
# subscriber that keeps up, since it catches up between batches.
MAX_LAG = 100_000
# The newest events of an org a tail keeps in memory (it trims back to this at twice as many).
TAIL_EVENTS = 10_000
# What all the tails of a process may hold together, estimated by `record_bytes`: past it, the
# largest tails forget their oldest events (their subscribers behind read the database).
SUBSCRIPTION_MEMORY_BYTES = 64 * 1024 * 1024
# An event's estimated memory, measured with tracemalloc on decoded records (bench/memory.py
# prints the estimate beside the measure): a record with small details takes ~0.9 KB, and its
# details about their JSON length plus ~35-60 bytes per value (each a Python object).
RECORD_BYTES = 1024
VALUE_BYTES = 64
RETRY_SECONDS = 1.0  # after a tail's read failed


class Subscriber:
    """One subscription's wake-up flag; many notices before it runs are one wake-up."""

    def __init__(
        self,
        broker: "Broker",
        org_id: str,
        tail: "Tail | None" = None,
        container_id: str | None = None,
    ) -> None:
        self.org_id = org_id
        self._broker = broker
        self._woken = asyncio.Event()
        self.max_lag = broker.max_lag
        self.tail = tail  # woken by it, after it has read what was committed
        self.container_id = container_id  # None: any of the org's events wakes it

    def wake(self) -> None:
        self._woken.set()

    async def wait(self) -> None:
        """Until a notice for the org arrives, or the broker's poll interval passes."""
        # Not asyncio.wait_for: on Python 3.11 a cancellation (the client's `complete`) that
        # lands as the wake-up does is swallowed, and the subscription would poll forever.
        with suppress(TimeoutError):
            async with asyncio.timeout(self._broker.poll_seconds):
                await self._woken.wait()
        self._woken.clear()

    def published(self) -> int:
        """How many of the org's events this process has been told about so far."""
        return self._broker.published(self.org_id)


class Broker:
    """In-process registry of subscribers by org; `publish` wakes those of one org."""

    def __init__(
        self,
        *,
        max_lag: int = MAX_LAG,
        poll_seconds: float = POLL_SECONDS,
        memory_bytes: int = SUBSCRIPTION_MEMORY_BYTES,
    ) -> None:
        self.max_lag = max_lag  # events a subscriber may fall behind before it is ended
        self.poll_seconds = poll_seconds
        self.memory_bytes = memory_bytes  # what the tails of this process hold, all together
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._published: dict[str, int] = {}
        self._tails: dict[str, Tail] = {}

    @asynccontextmanager
    async def subscribe(self, org_id: str) -> AsyncIterator[Subscriber]:
        """A subscriber for the org, registered until the block ends."""
        subscriber = Subscriber(self, org_id)
        members = self._subscribers.setdefault(org_id, set())
        members.add(subscriber)
        try:
            yield subscriber
        finally:
            members.discard(subscriber)
            if not members and self._subscribers.get(org_id) is members:
                del self._subscribers[org_id]

    @asynccontextmanager
    async def follow(
        self, db: Database, org_id: str, container_id: str | None = None
    ) -> AsyncIterator[Subscriber]:
        """A subscriber woken by the org's tail (started for the first, stopped after the
        last), which holds the org's newest events for it to read; with a container, only
        that container's events wake it."""
        tail = self._tails.get(org_id)
        if tail is None:
            tail = self._tails[org_id] = Tail(db, self, org_id)
            tail.start()
        subscriber = Subscriber(self, org_id, tail, container_id)
        tail.add(subscriber)
        try:
            yield subscriber
        finally:
            tail.discard(subscriber)
            if not tail.followers and self._tails.get(org_id) is tail:
                del self._tails[org_id]
                await tail.stop()

    def publish(self, org_id: str, count: int) -> None:
        """`count` new events of the org are committed."""
        self._published[org_id] = self._published.get(org_id, 0) + count
        for subscriber in self._subscribers.get(org_id, ()):
            subscriber.wake()

    def publish_rows(self, org_id: str, rows: list[EventRecord]) -> None:
        """The writer's commit hook: these rows of the org are committed."""
        if rows:
            self.publish(org_id, len(rows))

    def published(self, org_id: str) -> int:
        return self._published.get(org_id, 0)

    def following(self) -> int:
        """How many subscriptions (`follow`) are open in this process, over all orgs."""
        return sum(len(tail.followers) for tail in self._tails.values())

    def held_bytes(self) -> int:
        """The estimated memory of the events every tail of this process holds."""
        return sum(tail.held_bytes for tail in self._tails.values())

    def _within_budget(self) -> None:
        """Trim the largest tails, oldest events first, until all hold at most
        `memory_bytes` together; called after a tail took new events.

        The largest give first: all of those above a level give what they hold above it,
        the level chosen so that together they free the excess.
        """
        excess = self.held_bytes() - self.memory_bytes
        if excess <= 0:
            return
        tails = sorted(self._tails.values(), key=lambda tail: tail.held_bytes, reverse=True)
        above = level = 0  # what the k largest hold together, and what each keeps
        for k, tail in enumerate(tails, 1):
            above += tail.held_bytes
            below = tails[k].held_bytes if k < len(tails) else 0
            if above - k * below >= excess:
                level = (above - excess) // k
                break
        for tail in tails[:k]:
            tail.forget(tail.held_bytes - level)

    def wake_all(self) -> None:
        for members in self._subscribers.values():
            for subscriber in members:
                subscriber.wake()


class _Background:
    """A task running `_run` between start() and stop()."""

    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # asyncio.wait, not `await task` under suppress(CancelledError): that would also
            # swallow a cancellation of the task calling stop().
            await asyncio.wait([task])

    async def _run(self) -> None:
        raise NotImplementedError


class Tail(_Background):
    """An org's newest committed events, read from the database once per wake-up for all of
    its subscribers in this process.

    Every event of the org with `base_id < id <= top_id` is held, in id order: on PostgreSQL
    an org's events commit in id order (storage.events takes a per-org lock), so reading
    after `top_id` misses none. Until its first read, and after a failed one, it holds
    nothing (`base_id` None) and subscribers read the database themselves.
    """

    def __init__(self, db: Database, broker: Broker, org_id: str) -> None:
        self._db = db
        self._broker = broker
        self.org_id = org_id
        self.followers: set[Subscriber] = set()
        self._by_container: dict[str | None, set[Subscriber]] = {}
        self.base_id: int | None = None
        self.top_id = 0
        self._ids: list[int] = []
        self._rows: list[EventRecord] = []
        self._sizes: list[int] = []  # each row's record_bytes
        self.held_bytes = 0

    def add(self, follower: Subscriber) -> None:
        self.followers.add(follower)
        self._by_container.setdefault(follower.container_id, set()).add(follower)

    def discard(self, follower: Subscriber) -> None:
        self.followers.discard(follower)
        members = self._by_container.get(follower.container_id)
        if members is not None:
            members.discard(follower)
            if not members:
                del self._by_container[follower.container_id]

    def after(self, after_id: int, limit: int) -> list[EventRecord] | None:
        """Up to `limit` of the org's events after `after_id`, every one of them up to
        `top_id`; None when events after it may be missing here (read the database)."""
        if self.base_id is None or after_id < self.base_id:
            return None
        start = bisect_right(self._ids, after_id)
        return self._rows[start : start + limit]

    async def _run(self) -> None:
        # Registered before the first read: a commit landing between the two wakes it.
        async with self._broker.subscribe(self.org_id) as notices:
            while True:
                try:
                    await self._follow(notices)
                except Exception:
                    logger.exception(
                        "the tail of org %r failed; its subscribers read alone", self.org_id
                    )
                self.base_id = None
                self._ids, self._rows, self._sizes, self.held_bytes = [], [], [], 0
                self._wake_followers()
                await asyncio.sleep(RETRY_SECONDS)

    async def _follow(self, notices: Subscriber) -> None:
        limit = FIRST_PAGE_SIZE
        self.top_id = await newest_event_id(self._db, self.org_id)
        self.base_id = self.top_id
        self._wake_followers()
        while True:
            await notices.wait()
            containers: set[str] = set()
            while True:
                async with self._db.reader() as reader:
                    found = await list_events(
                        reader,
                        org_id=self.org_id,
                        page=Page(limit=limit, after_id=self.top_id, order=Order.ASC),
                    )
                if found.rows:
                    limit = page_size(len(found.rows), self._keep(found.rows))
                containers.update(row["container_id"] for row in found.rows)
                if found.next_cursor is None:
                    break
            self._wake_followers(containers)

    def _keep(self, rows: Sequence[EventRecord]) -> int:
        """Hold the rows (the newest of the org, in id order); their estimated bytes."""
        sizes = [record_bytes(row) for row in rows]
        self._ids.extend(row["id"] for row in rows)
        self._rows.extend(rows)
        self._sizes.extend(sizes)
        self.held_bytes += sum(sizes)
        self.top_id = self._ids[-1]
        if len(self._ids) > 2 * TAIL_EVENTS:
            self._drop(len(self._ids) - TAIL_EVENTS)
        self._broker._within_budget()
        return sum(sizes)

    def forget(self, at_least: int) -> None:
        """Drop the oldest events until `at_least` bytes are freed (or none is left).
        Subscribers behind the new `base_id` read the database."""
        if at_least <= 0:
            return
        freed = list(accumulate(self._sizes))
        self._drop(min(bisect_left(freed, at_least) + 1, len(freed)))

    def _drop(self, count: int) -> None:
        if count <= 0:
            return
        self.base_id = self._ids[count - 1]
        self.held_bytes -= sum(self._sizes[:count])
        del self._ids[:count], self._rows[:count], self._sizes[:count]

    def _wake_followers(self, containers: set[str] | None = None) -> None:
        """Wake those following any of the containers (None: all of them), and those
        following the whole org."""
        if containers is None:
            woken: Iterable[Subscriber] = self.followers
        else:
            every = self._by_container
            woken = every.get(None, set()).union(
                *(every[container] for container in containers if container in every)
            )
        for follower in woken:
            follower.wake()


def record_bytes(row: EventRecord) -> int:
    """An estimate, from above, of the memory a decoded record takes (see RECORD_BYTES):
    its details' JSON length plus VALUE_BYTES for each value in them."""
    details = orjson.dumps(row["details"])
    values = details.count(b",") + details.count(b":") + 1
    return RECORD_BYTES + len(details) + VALUE_BYTES * values


def page_size(events: int, total_bytes: int) -> int:
    """How many events to read next, after `events` that took `total_bytes`."""
    return max(1, min(FOLLOW_PAGE_SIZE, PAGE_BYTES * events // max(total_bytes, 1)))


class Listener(_Background):
    """LISTENs for commit notices on PostgreSQL on a connection of its own (a pooled one
    would be handed to other work), reconnecting with backoff when it drops."""

    def __init__(self, dsn: str, broker: Broker) -> None:
        self._dsn = dsn
        self._broker = broker
        self.listening = asyncio.Event()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                connection = await asyncpg.connect(self._dsn)
                try:
                    await self._listen(connection)
                finally:
                    self.listening.clear()
                    with suppress(Exception):
                        await connection.close(timeout=1)
                failures = 0  # it listened until now: try again at once
                logger.warning("lost the commit listener's connection; reconnecting")
            except Exception as error:  # whatever failed, listening again is the remedy
                logger.warning("cannot listen for commits: %s", error)
            await asyncio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
            failures += 1

    async def _listen(self, connection: Any) -> None:
        """Feed the broker until the connection is lost."""
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        await connection.add_listener(CHANNEL, self._notice)
        # Notices sent while nobody listened are gone: every subscriber re-reads.
        self._broker.wake_all()
        self.listening.set()
        await lost.wait()

    def _notice(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            committed = decode_committed(payload)
        except InvalidNotice:
            logger.warning("ignoring a malformed commit notice")
            return
        self._broker.publish(committed.org_id, committed.last_id - committed.first_id + 1)


@asynccontextmanager
async def fan_out(db: Database, broker: Broker) -> AsyncIterator[None]:
    """Feed the broker with the database's commits while the block runs."""
    if db.dialect != "postgresql":
        announce: Callable[[str, list[EventRecord]], None] = broker.publish_rows
        db.writer.on_commit.append(announce)
        try:
            yield
        finally:
            db.writer.on_commit.remove(announce)
        return
    # Every process's commits arrive as notices, this one's included: the writer's own
    # announcements would only wake subscribers twice.
    listener = Listener(asyncpg_dsn(db.engine.url), broker)
    listener.start()
    try:
        yield
    finally:
        await listener.stop()


class SubscriberTooSlow(Exception):
    """The subscriber fell more than the broker's `max_lag` events behind; `last_id` is the
    last event it was given (or where it started), to resume after."""

    def __init__(self, last_id: int, max_lag: int) -> None:
        super().__init__(f"fell more than {max_lag} events behind")
        self.last_id = last_id


async def newest_event_id(db: Database, org_id: str) -> int:
    """The id of the org's newest committed event; 0 when it has none."""
    async with db.reader() as reader:
        found = await list_events(reader, org_id=org_id, page=Page(limit=1, order=Order.DESC))
    return found.rows[0]["id"] if found.rows else 0


async def follow_events(
    db: Database,
    subscriber: Subscriber,
    *,
    after_id: int,
    event_filter: EventFilter | None = None,
    container_id: str | None = None,
) -> AsyncGenerator[EventRecord, None]:
    """The org's events after `after_id` in id order, then each new one as it is committed.

    Every read starts after the last event yielded, so no event is skipped or repeated
    between replay and live delivery. Raises SubscriberTooSlow once more than `max_lag` of
    the org's events (whatever the filter) were committed since it last caught up.
    """
    max_lag = subscriber.max_lag
    limit = FIRST_PAGE_SIZE  # of a read of the database
    caught_up_at = subscriber.published()
    tail = subscriber.tail
    while True:
        seen = subscriber.published()
        if seen - caught_up_at > max_lag:
            raise SubscriberTooSlow(after_id, max_lag)
        held = None if tail is None else tail.after(after_id, FOLLOW_PAGE_SIZE)
        if held is not None:
            rows: Sequence[EventRecord] = [
                row for row in held if event_matches(row, event_filter, container_id)
            ]
            more = len(held) == FOLLOW_PAGE_SIZE
            last_id = held[-1]["id"] if held else after_id  # past those filtered out too
        else:
            # All the org's events up to here were committed before the read began.
            top_id = None if tail is None or tail.base_id is None else tail.top_id
            async with db.reader() as reader:
                found = await list_events(
                    reader,
                    org_id=subscriber.org_id,
                    event_filter=event_filter,
                    container_id=container_id,
                    page=Page(limit=limit, after_id=after_id, order=Order.ASC),
                )
            rows, more = found.rows, found.next_cursor is not None
            if rows:
                limit = page_size(len(rows), sum(record_bytes(row) for row in rows))
            last_id = rows[-1]["id"] if rows else after_id
            if not more and top_id is not None:
                # None of the rest up to the tail's top matched: go on from the tail.
                last_id = max(last_id, top_id)
        for count, row in enumerate(rows, 1):
            yield row
            if count % TURN_EVENTS == 0:
                # Sending an event rarely waits, so a subscriber with a backlog would hold the
                # event loop for a whole page, and every request and subscriber behind it.
                await asyncio.sleep(0)
        after_id = last_id
        if not more:
            # Everything committed before `seen` was counted is now read.
            caught_up_at = seen
            await subscriber.wait()
