"""The README's "Client examples", run as written against a live `events-gateway serve`.

Each block is read from README.md itself (the fenced block after its `<!-- example: NAME -->`
marker), so the code a developer copies is the code tested. The server is a real process on
127.0.0.1 and a free port, over a temporary SQLite file migrated by `events-gateway db upgrade`
and seeded through the storage functions; each example lists org `acme`'s FAIL events and logs
one, and the test checks what it printed against what is stored.
"""

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.database import Database
from storage.models import Event
from tests.factories import make_events, make_org
from tests.test_cli import run_cli, running, wait_until_serving

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLE = re.compile(
    r"<!-- example: (?P<name>[\w-]+) -->\n```(?P<language>\w+)\n(?P<code>.*?)\n```", re.DOTALL
)
RUN_TIMEOUT = 60
ORG = "acme"


@dataclass(frozen=True)
class Gateway:
    url: str
    key: str
    database_url: str


def readme_example(name: str) -> str:
    """The code of the README block marked `<!-- example: name -->`."""
    blocks = {match["name"]: match["code"] for match in EXAMPLE.finditer(README.read_text())}
    if name not in blocks:
        pytest.fail(
            f"README.md has no block marked <!-- example: {name} --> (found {sorted(blocks)})"
        )
    return blocks[name]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _seed(database_url: str) -> str:
    db = Database(database_url)
    try:
        key = await make_org(db, ORG)
        await make_org(db, "other")
        await make_events(
            db,
            ORG,
            [
                ("vault-1", {"event_type": "ACCESS", "status": "FAILURE", "actor": "mallory"}),
                ("vault-1", {"event_type": "ACCESS"}),
                ("vault-2", {"event_type": "BLOCK", "status": "FAILURE"}),
                ("vault-2", {"event_type": "CREATE"}),
                ("vault-3", {"event_type": "EXPIRE", "status": "FAILURE"}),
            ],
        )
        # Another org's failures must not show up in acme's lists.
        await make_events(db, "other", [("vault-9", {"event_type": "ACCESS", "status": "FAILURE"})])
    finally:
        await db.dispose()
    return key


async def _failure_ids(database_url: str) -> list[int]:
    db = Database(database_url)
    try:
        async with db.session() as session:
            query = (
                select(Event.id)
                .where(Event.org_id == ORG, Event.status == "FAILURE")
                .order_by(Event.id.desc())
            )
            return [int(row) for row in (await session.execute(query)).scalars()]
    finally:
        await db.dispose()


async def _stored_event(database_url: str, event_id: int) -> Event | None:
    db = Database(database_url)
    try:
        async with db.session() as session:
            return await session.get(Event, event_id)
    finally:
        await db.dispose()


def stored_failure_ids(gateway: Gateway) -> list[int]:
    """Acme's FAILURE events as stored, newest first."""
    return asyncio.run(_failure_ids(gateway.database_url))


def assert_stored_as_logged(gateway: Gateway, event_id: int, output: str) -> None:
    """The event an example logged is stored as the example sent it."""
    event = asyncio.run(_stored_event(gateway.database_url, event_id))
    assert event is not None, f"event {event_id} is not stored\n{output}"
    stored = (event.org_id, event.container_id, event.event_type, event.status, event.actor)
    assert stored == (ORG, "vault-1", "ACCESS", "FAILURE", "alice"), output


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """`events-gateway serve` on a migrated, seeded SQLite file; stopped after the module."""
    folder = tmp_path_factory.mktemp("readme_examples")
    database_url = f"sqlite+aiosqlite:///{folder / 'events.db'}"
    upgrade = run_cli("db", "upgrade", database_url=database_url)
    assert upgrade.returncode == 0, upgrade.stderr
    key = asyncio.run(_seed(database_url))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    serve = ["serve", "--port", str(port)]
    with running(serve, database_url=database_url, logs=folder) as process:
        wait_until_serving(process, url)
        yield Gateway(url=url, key=key, database_url=database_url)


def run_example(gateway: Gateway, command: list[str]) -> str:
    """Run an example with the gateway in its environment; its stdout, or the test fails."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("EVENTS_GATEWAY_")}
    env = {
        **inherited,
        "EVENTS_GATEWAY_URL": gateway.url,
        "EVENTS_GATEWAY_KEY": gateway.key,
        "EVENTS_GATEWAY_ORG": ORG,
    }
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"{command[0]} did not finish in {RUN_TIMEOUT}s; stdout:\n{timeout.stdout!r}")
    output = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, output
    return result.stdout


def _example_file(tmp_path: Path, name: str, suffix: str) -> Path:
    path = tmp_path / f"{name}{suffix}"
    path.write_text(readme_example(name) + "\n")
    return path


def _logged_id(line: str, output: str) -> int:
    found = re.fullmatch(r"logged event (\d+)", line)
    assert found, f"expected 'logged event <id>', got {line!r}\n{output}"
    return int(found[1])


def _failures_line(ids: list[int]) -> str:
    return " ".join(["FAIL events:", *map(str, ids)])


def test_python_gql_example_lists_failures_logs_one_and_streams_it(
    gateway: Gateway, tmp_path: Path
) -> None:
    before = stored_failure_ids(gateway)

    stdout = run_example(
        gateway, [sys.executable, str(_example_file(tmp_path, "python-gql", ".py"))]
    )

    lines = stdout.splitlines()
    assert len(lines) == 3, stdout
    assert lines[0] == _failures_line(before[:20]), stdout
    logged = _logged_id(lines[1], stdout)
    assert lines[2] == f"streamed event {logged}", stdout
    assert stored_failure_ids(gateway) == [logged, *before], stdout
    assert_stored_as_logged(gateway, logged, stdout)


def test_javascript_fetch_example_lists_failures_and_logs_one(
    gateway: Gateway, tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JavaScript example needs Node 18+")
    before = stored_failure_ids(gateway)

    stdout = run_example(gateway, [node, str(_example_file(tmp_path, "javascript-fetch", ".mjs"))])

    lines = stdout.splitlines()
    assert len(lines) == 2, stdout
    assert lines[0] == _failures_line(before[:20]), stdout
    logged = _logged_id(lines[1], stdout)
    assert stored_failure_ids(gateway) == [logged, *before], stdout
    assert_stored_as_logged(gateway, logged, stdout)


def test_curl_example_gets_by_fail_and_posts_one_event(gateway: Gateway, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    before = stored_failure_ids(gateway)

    script = _example_file(tmp_path, "curl-rest", ".sh")
    stdout = run_example(gateway, ["bash", "-e", str(script)])

    lines = stdout.splitlines()
    assert len(lines) == 2, stdout
    listed, posted = (json.loads(line) for line in lines)
    assert [event["id"] for event in listed["events"]] == before, stdout
    assert {event["status"] for event in listed["events"]} == {"FAILURE"}, stdout
    assert listed["next_cursor"] is None, stdout
    assert posted["message"] == "Event logged successfully", stdout
    logged = posted["event"]["id"]
    assert stored_failure_ids(gateway) == [logged, *before], stdout
    assert_stored_as_logged(gateway, logged, stdout)
