"""Crash safety: what the gateway acknowledged survives a SIGKILL, exactly once.

A real server process (uvicorn, one worker, on 127.0.0.1 and a free port) on a SQLite file
takes a stream of concurrent POSTs: single events and small batches, some with an
Idempotency-Key. Some way into the stream it is killed with SIGKILL, while requests are in
flight; the file is then read as the crash left it, the server is restarted on it, and the
client retries every keyed write that got no answer, with the same key and body. Unkeyed
writes that got no answer are not retried (at most once: they may or may not be stored).

Every event carries a unique marker in its details ({"n": marker}), so each stored row is
traced back to the write that sent it. After every kill, and once more after the last
server stops, the file must show:

1. every acknowledged event stored exactly once, under the id it was acknowledged with;
2. every keyed write stored exactly once; a retry whose first attempt had been committed
   replays its ids, and one whose first attempt had not stores it afresh;
3. every unanswered unkeyed write stored at most once;
4. nothing half-written: each write stored whole or not at all, with its idempotency key
   exactly when its events; the count roll-ups, time zones, late events and containers
   exactly what the events table implies;
5. PRAGMA integrity_check "ok".

Run with `pytest -s` to see a line per cycle and a total.
"""

import asyncio
import itertools
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from storage.counts import hour_of, key_columns, roll_up
from storage.database import Database
from storage.orgs import create_org
from storage.windows import HOUR, MINUTE, is_late, zone_start

SIGKILL: int | None = getattr(signal, "SIGKILL", None)
pytestmark = pytest.mark.skipif(
    SIGKILL is None, reason="needs SIGKILL (POSIX) to kill the server mid-write"
)

ROOT = Path(__file__).resolve().parent.parent
ORG = "acme"
BATCH_PATH = f"/orgs/{ORG}/events"
CYCLES = 6
WORKERS = 24  # concurrent requests in flight
SEED = 20231118
KILL_AFTER = (0.2, 0.8)  # seconds into a cycle's stream, drawn per cycle
REQUEST_TIMEOUT = 5.0
# A share of keyed writes time out on the client almost at once: the server commits them all
# the same (unless killed first), so their retries after the restart replay them. The kill
# itself seldom lands between a commit and its answers, a window of a few milliseconds.
IMPATIENT_SHARE = 0.1
IMPATIENT_TIMEOUT = 0.05
START_TIMEOUT = 20.0
RETRY_TIMEOUT = 10.0
TEST_TIMEOUT = 50.0
REPLAY_SAMPLE = 5  # acknowledged keyed writes re-sent after each restart
EVENT_TYPES = ("ACCESS", "BLOCK", "CREATE", "EXPIRE", "UPDATE", "DELETE")


# The writes.


@dataclass
class Write:
    """One logical write (one POST, retried with the same key and body if keyed)."""

    cycle: int
    markers: list[int]  # its events' markers, in order
    path: str
    body: Any
    key: str | None = None
    timeout: float = REQUEST_TIMEOUT  # of the first attempt
    acknowledged: list[int] | None = None  # ids of the 200 answer to the first attempt
    unanswered: bool = False  # the first attempt got no answer at all
    crash_ids: list[int] | None = None  # unanswered: its events' ids found after the kill
    retried: list[int] | None = None  # ids of the 200 answer to the retry
    replayed: bool = False  # the retry was answered with Idempotent-Replayed: true

    @property
    def impatient(self) -> bool:
        """Its first attempt gives up long before the server answers."""
        return self.timeout < REQUEST_TIMEOUT

    @property
    def batch(self) -> bool:
        return self.path == BATCH_PATH

    @property
    def answer(self) -> list[int] | None:
        """The ids the client was last told, if any."""
        return self.retried if self.retried is not None else self.acknowledged

    def __str__(self) -> str:
        kind = "batch" if self.batch else "event"
        return f"{kind} {self.markers} key={self.key} (cycle {self.cycle})"


class Planner:
    """Makes the stream's writes, from a seeded random source, and keeps every one made."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.markers = itertools.count(1)
        self.writes: list[Write] = []

    def next(self, cycle: int) -> Write:
        rng = self.rng
        kind = rng.choices(["event", "keyed event", "keyed batch", "batch"], [4, 4, 1, 1])[0]
        if kind.endswith("batch"):
            markers, events = zip(
                *(self._event(cycle) for _ in range(rng.randint(2, 4))), strict=True
            )
            body: Any = [{**event, "container_id": self._container(cycle)} for event in events]
            write = Write(cycle, list(markers), BATCH_PATH, body)
        else:
            marker, event = self._event(cycle)
            path = f"/orgs/{ORG}/containers/{self._container(cycle)}/events"
            write = Write(cycle, [marker], path, event)
        if kind.startswith("keyed"):
            write.key = f"k-{write.markers[0]}"
            if rng.random() < IMPATIENT_SHARE:
                write.timeout = IMPATIENT_TIMEOUT
        self.writes.append(write)
        return write

    def _event(self, cycle: int) -> tuple[int, dict[str, Any]]:
        rng, marker = self.rng, next(self.markers)
        # Half stamped now (they widen the time zones), half long ago (listed as late events).
        if rng.random() < 0.5:
            timestamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        else:
            timestamp = f"2023-11-18T12:{rng.randrange(60):02d}:00+00:00"
        return marker, {
            "event_type": rng.choice(EVENT_TYPES),
            "status": rng.choice(("SUCCESS", "FAILURE")),
            "timestamp": timestamp,
            "actor": f"user-{rng.randrange(20)}",
            "details": {"n": marker, "cycle": cycle},
        }

    def _container(self, cycle: int) -> str:
        # Mostly known containers; a few new ones, registered by the writes being killed.
        if self.rng.random() < 0.1:
            return f"new-{cycle}-{self.rng.randrange(10**6)}"
        return f"vault-{self.rng.randrange(6)}"


# The server.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sqlite_url(database: Path) -> str:
    return f"sqlite+aiosqlite:///{database}"


async def create_database(database: Path) -> str:
    """The schema and org `acme`; returns its API key."""
    db = Database(sqlite_url(database))
    try:
        await db.create_schema()
        async with db.session() as session:
            _key, secret = await create_org(session, org_id=ORG)
    finally:
        await db.dispose()
    return secret


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    secret: str
    log: Path

    @classmethod
    async def start(cls, database: Path, secret: str, log: Path) -> "Server":
        """Start a gateway on a free port and wait until it answers."""
        port = free_port()
        env = {
            **os.environ,
            "EVENTS_GATEWAY_DATABASE_URL": sqlite_url(database),
            "EVENTS_GATEWAY_KEY_CACHE_SECONDS": "0",
        }
        command = [
            *(sys.executable, "-m", "uvicorn", "gateway.app:create_app", "--factory"),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            *("--no-access-log", "--log-level", "warning"),
        ]
        with log.open("ab") as output:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
            )
        server = cls(process, f"http://127.0.0.1:{port}", secret, log)
        try:
            await server._wait_until_ready()
        except BaseException:
            server.kill()
            raise
        return server

    async def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        async with self.client(timeout=1.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the server exited ({self.process.returncode}):\n{self.tail}"
                    )
                try:
                    response = await client.get(f"/orgs/{ORG}/events", params={"limit": 1})
                    if response.status_code < 500:
                        assert response.status_code == 200, response.text
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the server did not answer in {START_TIMEOUT} s:\n{self.tail}"
                    )
                await asyncio.sleep(0.05)

    @property
    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def client(self, timeout: float = REQUEST_TIMEOUT) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.secret}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=WORKERS),
            trust_env=False,  # loopback only: no proxy from the environment
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            assert SIGKILL is not None
            os.kill(self.process.pid, SIGKILL)
        self.process.wait(timeout=5)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), or SIGKILL if it does not come."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


# Talking to it.


@dataclass
class Run:
    """Everything the client saw that it should not have."""

    unexpected: list[str] = field(default_factory=list)


async def post(
    client: httpx.AsyncClient, write: Write, timeout: float = REQUEST_TIMEOUT
) -> httpx.Response | None:
    """POST a write; None if it got no answer (refused, reset, timed out)."""
    headers = {"Idempotency-Key": write.key} if write.key is not None else {}
    try:
        return await client.post(write.path, json=write.body, headers=headers, timeout=timeout)
    except httpx.TransportError:
        return None


def ids_of(write: Write, response: httpx.Response) -> list[int]:
    body = response.json()
    return list(body["ids"]) if write.batch else [body["event"]["id"]]


def replayed(response: httpx.Response) -> bool:
    return response.headers.get("idempotent-replayed") == "true"


async def stream_until_killed(
    server: Server, planner: Planner, run: Run, cycle: int, kill_after: float
) -> list[Write]:
    """WORKERS clients POST writes back to back; SIGKILL the server `kill_after` s in."""
    writes: list[Write] = []
    killed = asyncio.Event()
    async with server.client() as client:

        async def worker() -> None:
            while not killed.is_set():
                write = planner.next(cycle)
                writes.append(write)
                response = await post(client, write, timeout=write.timeout)
                if response is None:
                    write.unanswered = True
                elif response.status_code != 200 or replayed(response):
                    run.unexpected.append(f"{write}: {response.status_code} {response.text}")
                else:
                    write.acknowledged = ids_of(write, response)

        workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
        await asyncio.sleep(kill_after)
        server.kill()
        killed.set()
        await asyncio.wait_for(asyncio.gather(*workers), timeout=2 * REQUEST_TIMEOUT)
    return writes


async def retry(server: Server, writes: Sequence[Write], run: Run) -> None:
    """Retry keyed writes that got no answer until answered (a 409 is retried later)."""
    async with server.client() as client:

        async def one(write: Write) -> None:
            deadline = time.monotonic() + RETRY_TIMEOUT
            while True:
                response = await post(client, write)
                if response is not None and response.status_code == 200:
                    write.retried, write.replayed = ids_of(write, response), replayed(response)
                    return
                if response is None or response.status_code != 409 or time.monotonic() > deadline:
                    answer = "no answer" if response is None else response.status_code
                    run.unexpected.append(f"retry of {write}: {answer}")
                    return
                await asyncio.sleep(0.05)

        await asyncio.gather(*(one(write) for write in writes))


async def replay_acknowledged(server: Server, writes: Sequence[Write], run: Run) -> None:
    """Acknowledged keyed writes, sent again after the restart, replay the same ids."""
    async with server.client() as client:
        for write in writes:
            response = await post(client, write)
            if (
                response is None
                or response.status_code != 200
                or not replayed(response)
                or ids_of(write, response) != write.acknowledged
            ):
                answer = "no answer" if response is None else f"{response.status_code}"
                run.unexpected.append(f"replay of acknowledged {write}: {answer}")


def retry_problems(writes: Sequence[Write]) -> list[str]:
    """A retry replays exactly when its first attempt had been committed, with its ids."""
    problems = []
    for write in writes:
        if write.crash_ids and (not write.replayed or write.retried != write.crash_ids):
            problems.append(f"{write}: committed as {write.crash_ids}, retry got {write.retried}")
        if not write.crash_ids and write.replayed:
            problems.append(f"{write}: not committed at the kill, yet its retry was replayed")
    return problems


# Reading the file.


class StoredEvent(NamedTuple):
    id: int
    container_id: str
    event_type: str
    status: str
    timestamp: datetime
    received_at: datetime
    marker: int | None


@dataclass
class Store:
    """The file's events, idempotency keys, and what in it disagrees with itself."""

    events: list[StoredEvent]
    keys: dict[str, list[int]]
    problems: list[str]

    def ids_by_marker(self) -> dict[int | None, list[int]]:
        found: dict[int | None, list[int]] = {}
        for event in self.events:
            found.setdefault(event.marker, []).append(event.id)
        return found


def utc(text: str) -> datetime:
    """SQLite's naive UTC datetime text, as storage.models reads it."""
    return datetime.fromisoformat(text + "+00:00")


def read_store(path: Path) -> Store:
    with closing(sqlite3.connect(path, timeout=5)) as connection:
        events = [
            StoredEvent(id_, container, type_, status, utc(at), utc(received), _marker(details))
            for id_, container, type_, status, at, received, details in connection.execute(
                "SELECT id, container_id, event_type, status, timestamp, received_at, details"
                " FROM events WHERE org_id = ? ORDER BY id",
                (ORG,),
            )
        ]
        keys = {
            key: json.loads(ids)
            for key, ids in connection.execute(
                "SELECT key, event_ids FROM idempotency_keys WHERE org_id = ?", (ORG,)
            )
        }
        problems = [
            *_integrity_problems(connection),
            *_roll_up_problems(connection, events),
            *_window_problems(connection, events),
            *_container_problems(connection, events),
        ]
    return Store(events, keys, problems)


def _marker(details: str | None) -> int | None:
    value = json.loads(details) if details is not None else None
    return value.get("n") if isinstance(value, dict) else None


def _integrity_problems(connection: sqlite3.Connection) -> list[str]:
    problems = []
    [(integrity,), *more] = connection.execute("PRAGMA integrity_check").fetchall()
    if integrity != "ok" or more:
        problems.append(f"integrity_check: {integrity} {more}")
    if broken := connection.execute("PRAGMA foreign_key_check").fetchall():
        problems.append(f"foreign_key_check: {broken[:10]}")
    return problems


def _roll_up_problems(connection: sqlite3.Connection, events: list[StoredEvent]) -> list[str]:
    """Each roll-up table holds exactly the counts of the events table."""
    fine = Counter(
        (ORG, hour_of(event.timestamp), event.container_id, event.event_type, event.status)
        for event in events
    )
    problems = []
    for table, expected in roll_up(fine).items():
        columns = ", ".join(key_columns(table))
        query = f"SELECT {columns}, event_count FROM {table.name} WHERE org_id = ?"
        found = Counter({tuple(row[:-1]): row[-1] for row in connection.execute(query, (ORG,))})
        if found != expected:
            problems.append(f"{table.name}: {sum(found.values())} != {sum(expected.values())}")
    return problems


def _window_problems(connection: sqlite3.Connection, events: list[StoredEvent]) -> list[str]:
    """Late events are listed, the others bound exactly by their minute's and hour's zones."""
    late = {event.id for event in events if is_late(event.timestamp, event.received_at)}
    zones: dict[tuple[int, datetime], tuple[int, int]] = {}
    for event in events:
        if event.id in late:
            continue
        for span in (MINUTE, HOUR):
            zone = (span, zone_start(event.timestamp, span))
            low, high = zones.get(zone, (event.id, event.id))
            zones[zone] = (min(low, event.id), max(high, event.id))
    found_late = {
        id_ for (id_,) in connection.execute("SELECT id FROM late_events WHERE org_id = ?", (ORG,))
    }
    found_zones = {
        (span, utc(start)): (low, high)
        for span, start, low, high in connection.execute(
            "SELECT span_seconds, start, min_id, max_id FROM event_zones WHERE org_id = ?", (ORG,)
        )
    }
    problems = []
    if found_late != late:
        problems.append(f"late_events: {sorted(found_late ^ late)[:10]} differ")
    if found_zones != zones:
        differ = {
            key
            for key in found_zones.keys() | zones.keys()
            if found_zones.get(key) != zones.get(key)
        }
        problems.append(f"event_zones: {sorted(differ)[:5]} differ")
    return problems


def _container_problems(connection: sqlite3.Connection, events: list[StoredEvent]) -> list[str]:
    """The containers are exactly those of the events, each with its latest timestamp."""
    latest: dict[str, datetime] = {}
    for event in events:
        latest[event.container_id] = max(
            latest.get(event.container_id, event.timestamp), event.timestamp
        )
    found = {
        id_: utc(at) if at is not None else None
        for id_, at in connection.execute(
            "SELECT id, last_event_at FROM containers WHERE org_id = ?", (ORG,)
        )
    }
    if found != latest:
        differ = sorted(
            id_ for id_ in found.keys() | latest.keys() if found.get(id_) != latest.get(id_)
        )
        return [f"containers: {differ[:10]} differ from their events"]
    return []


# Checking the writes against the file.


@dataclass
class Audit:
    lost: list[int] = field(default_factory=list)  # acknowledged or retried markers, absent
    duplicated: list[int] = field(default_factory=list)  # markers stored more than once
    wrong_id: list[int] = field(default_factory=list)  # stored under another id than answered
    half_written: list[str] = field(default_factory=list)  # writes stored in part
    key_mismatch: list[str] = field(default_factory=list)  # key without events or vice versa
    phantoms: list[int | None] = field(default_factory=list)  # rows no write sent

    def failures(self) -> dict[str, list[Any]]:
        return {name: found for name, found in vars(self).items() if found}


def audit(writes: Sequence[Write], store: Store) -> Audit:
    stored = store.ids_by_marker()
    found = Audit()
    for write in writes:
        ids = [stored.get(marker, []) for marker in write.markers]
        found.duplicated += [m for m, i in zip(write.markers, ids, strict=True) if len(i) > 1]
        if len({len(i) for i in ids}) > 1:
            found.half_written.append(f"{write}: {ids}")
        if write.answer is not None:
            for marker, got, told in zip(write.markers, ids, write.answer, strict=True):
                if not got:
                    found.lost.append(marker)
                elif len(got) == 1 and got != [told]:
                    found.wrong_id.append(marker)
        if write.key is not None:
            key_ids = store.keys.get(write.key)
            if all(len(i) == 1 for i in ids):
                if key_ids != [i[0] for i in ids]:
                    found.key_mismatch.append(f"{write}: stored as {ids}, key holds {key_ids}")
            elif key_ids is not None:
                found.key_mismatch.append(f"{write}: key holds {key_ids}, events {ids}")
    sent = {marker for write in writes for marker in write.markers}
    found.phantoms = sorted((m for m in stored if m not in sent), key=lambda m: m or 0)
    if unknown_keys := store.keys.keys() - {write.key for write in writes}:
        found.key_mismatch.append(f"keys no write sent: {sorted(unknown_keys)[:10]}")
    return found


def stored_ids(write: Write, store: Store) -> list[int] | None:
    stored = store.ids_by_marker()
    ids = [stored.get(marker, []) for marker in write.markers]
    return [i[0] for i in ids] if all(ids) else None


@dataclass
class Tally:
    sent: int = 0
    acknowledged: int = 0
    unanswered_keyed: int = 0  # no answer, the kill being why
    unanswered_unkeyed: int = 0
    committed_unanswered: int = 0  # of those, found stored after the kill
    impatient: int = 0  # no answer, the client having given up first
    committed_impatient: int = 0  # of those, found stored after the kill
    retried: int = 0
    replayed: int = 0
    lost: int = 0
    duplicated: int = 0

    def add(self, other: "Tally") -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)

    def __str__(self) -> str:
        return (
            f"sent {self.sent}, acknowledged {self.acknowledged}, "
            f"unanswered {self.unanswered_keyed + self.unanswered_unkeyed} "
            f"(keyed {self.unanswered_keyed}, unkeyed {self.unanswered_unkeyed}; "
            f"{self.committed_unanswered} committed before the kill), "
            f"given up by the client {self.impatient} ({self.committed_impatient} committed), "
            f"retried {self.retried}, replayed {self.replayed}, "
            f"lost {self.lost}, duplicated {self.duplicated}"
        )


def cycle_tally(writes: Sequence[Write], crash_audit: Audit) -> Tally:
    """What became of one cycle's writes (lost and duplicated: of all writes, at the kill)."""
    by_kill = [write for write in writes if write.unanswered and not write.impatient]
    impatient = [write for write in writes if write.unanswered and write.impatient]
    retried = [write for write in writes if write.retried is not None]
    return Tally(
        sent=len(writes),
        acknowledged=sum(write.acknowledged is not None for write in writes),
        unanswered_keyed=sum(write.key is not None for write in by_kill),
        unanswered_unkeyed=sum(write.key is None for write in by_kill),
        committed_unanswered=sum(write.crash_ids is not None for write in by_kill),
        impatient=len(impatient),
        committed_impatient=sum(write.crash_ids is not None for write in impatient),
        retried=len(retried),
        replayed=sum(write.replayed for write in retried),
        lost=len(crash_audit.lost),
        duplicated=len(crash_audit.duplicated),
    )


def assert_sound(store: Store, found: Audit, run: Run, when: str) -> None:
    assert not store.problems, f"{when}: the file disagrees with itself: {store.problems}"
    assert not found.failures(), f"{when}: {found.failures()}"
    assert not run.unexpected, f"{when}: unexpected answers: {run.unexpected[:10]}"


async def test_acknowledged_events_survive_sigkill_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    secret = await create_database(path)
    log = tmp_path / "server.log"
    rng = random.Random(SEED)
    planner, run, total = Planner(rng), Run(), Tally()
    started = time.monotonic()
    server = await Server.start(path, secret, log)
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            for cycle in range(1, CYCLES + 1):
                kill_after = rng.uniform(*KILL_AFTER)
                writes = await stream_until_killed(server, planner, run, cycle, kill_after)

                crashed = read_store(path)
                unanswered = [write for write in writes if write.unanswered]
                for write in unanswered:
                    write.crash_ids = stored_ids(write, crashed)
                crash_audit = audit(planner.writes, crashed)

                server = await Server.start(path, secret, log)
                to_retry = [write for write in unanswered if write.key is not None]
                await retry(server, to_retry, run)
                acknowledged_keyed = [w for w in writes if w.key and w.acknowledged]
                await replay_acknowledged(server, acknowledged_keyed[:REPLAY_SAMPLE], run)

                tally = cycle_tally(writes, crash_audit)
                total.add(tally)
                print(f"\ncycle {cycle}: killed {kill_after:.2f} s in: {tally}", end="")
                assert_sound(crashed, crash_audit, run, f"after kill {cycle}")
                assert not retry_problems(to_retry), retry_problems(to_retry)
    finally:
        server.stop()

    final = read_store(path)
    final_audit = audit(planner.writes, final)
    total.lost, total.duplicated = len(final_audit.lost), len(final_audit.duplicated)
    print(
        f"\ntotal: {CYCLES} kills, {len(final.events)} events stored, {total}"
        f" ({time.monotonic() - started:.1f} s)"
    )
    assert_sound(final, final_audit, run, "after the last stop")
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")
    assert total.acknowledged > 0
    assert total.unanswered_keyed + total.unanswered_unkeyed > 0, (
        "no kill landed mid-stream: every request was answered"
    )
    # The events are exactly those of the writes stored: no write stored twice or in part.
    stored_writes = [w for w in planner.writes if stored_ids(w, final) is not None]
    assert len(final.events) == sum(len(write.markers) for write in stored_writes)
