"""The `events-gateway` command, run as a real process.

SQLite only (the CLI's default database), except the one test marked PostgreSQL below:
the storage-backed suite already runs every query on both databases.
"""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy.exc import SQLAlchemyError

from gateway.app import create_app
from gateway.config import Settings
from storage.database import Database
from tests.conftest import POSTGRES_URL_VARIABLE

COMMAND_TIMEOUT = 60
START_TIMEOUT = 30


def _command() -> list[str]:
    # The console script installed beside this interpreter; `python -m gateway` is the same
    # entry point when the package is not installed as a script.
    script = shutil.which("events-gateway", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "gateway"]


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"


def run_cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EVENTS_GATEWAY_DATABASE_URL": database_url}
    return subprocess.run(
        [*_command(), *args], env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )


def create_org_key(org_id: str, database_url: str) -> str:
    result = run_cli("orgs", "create", org_id, database_url=database_url)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def status_with_key(database_url: str, key: str, path: str = "/orgs/acme/events") -> int:
    """The HTTP status a REST GET with this key gets from the app, in process."""
    app = create_app(Settings(database_url=database_url))
    await app.state.db.create_schema()  # ASGITransport runs no lifespan
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get(path, headers={"Authorization": f"Bearer {key}"})
    finally:
        await app.state.db.dispose()
    return response.status_code


def _assert_clean_failure(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running(args: list[str], *, database_url: str, logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running command with stdout and stderr in files; always stopped afterwards."""
    env = {**os.environ, "EVENTS_GATEWAY_DATABASE_URL": database_url}
    with (logs / "stdout").open("w") as stdout, (logs / "stderr").open("w") as stderr:
        process = subprocess.Popen([*_command(), *args], env=env, stdout=stdout, stderr=stderr)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def wait_until_serving(process: subprocess.Popen[bytes], base_url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited before answering"
        try:
            if httpx.get(f"{base_url}/openapi.json", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"no answer from {base_url} within {START_TIMEOUT}s")


async def test_orgs_create_prints_only_the_key_and_it_authenticates(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)
    result = run_cli("orgs", "create", "acme", "--name", "Acme Corp", database_url=url)

    assert result.returncode == 0, result.stderr
    [key] = result.stdout.splitlines()
    assert key.startswith("egw_")
    assert key not in result.stderr
    assert await status_with_key(url, key) == 200
    assert await status_with_key(url, "egw_not-a-key") == 401


def test_orgs_create_twice_fails_cleanly(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)
    create_org_key("acme", url)

    again = run_cli("orgs", "create", "acme", database_url=url)

    _assert_clean_failure(again)
    assert "already exists" in again.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["orgs", "create", "not a valid id"],
        ["keys", "create", "nobody"],
        ["keys", "list", "nobody"],
        ["keys", "revoke", "key_0000000000000000"],
        ["--database-url", "mysql://db/events", "keys", "list", "acme"],
        ["keys", "list", "acme", "--database-url", "sqlite:////no/such/dir/events.db"],
    ],
    ids=["invalid-org-id", "keys-create-unknown-org", "keys-list-unknown-org",
         "revoke-unknown-key", "unsupported-url", "unreachable-database"],
)  # fmt: skip
def test_errors_are_one_line_on_stderr(tmp_path: Path, args: list[str]) -> None:
    _assert_clean_failure(run_cli(*args, database_url=_sqlite_url(tmp_path)))


async def test_keys_create_list_revoke(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)
    first = create_org_key("acme", url)
    created = run_cli("keys", "create", "acme", database_url=url)
    assert created.returncode == 0, created.stderr
    [second] = created.stdout.splitlines()

    listed = run_cli("keys", "list", "acme", database_url=url)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[1]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert set(rows) == {first[:10] + "...", second[:10] + "..."}
    assert all(row[-1] == "-" for row in rows.values())

    second_id = rows[second[:10] + "..."][0]
    revoked = run_cli("keys", "revoke", second_id, database_url=url)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout == ""

    relisted = run_cli("keys", "list", "acme", database_url=url)
    revoked_at = {line.split()[0]: line.split()[-1] for line in relisted.stdout.splitlines()[1:]}
    assert revoked_at[second_id] != "-"
    assert await status_with_key(url, second) == 401
    assert await status_with_key(url, first) == 200
    _assert_clean_failure(run_cli("keys", "revoke", second_id, database_url=url))


def test_keys_list_never_prints_a_secret(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)
    keys = [create_org_key("acme", url)]
    keys.append(run_cli("keys", "create", "acme", database_url=url).stdout.strip())

    listed = run_cli("keys", "list", "acme", database_url=url)

    assert listed.returncode == 0
    for key in keys:
        assert key not in listed.stdout + listed.stderr
        assert key[:11] not in listed.stdout  # not even one character past the prefix


def test_database_url_flag_wins_over_the_environment(tmp_path: Path) -> None:
    flagged = tmp_path / "flagged.db"
    result = run_cli(
        "orgs", "create", "acme", "--database-url", f"sqlite:///{flagged}",
        database_url=_sqlite_url(tmp_path),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert flagged.exists()
    assert not (tmp_path / "events.db").exists()


async def test_serve_answers_rest_and_graphql(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)
    key = create_org_key("acme", url)
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}

    with running(["serve", "--port", str(port)], database_url=url, logs=tmp_path) as process:
        wait_until_serving(process, base_url)
        rest = httpx.get(f"{base_url}/orgs/acme/events", headers=headers, timeout=10)
        graphql = httpx.post(
            f"{base_url}/graphql",
            json={"query": '{ org(id: "acme") { name } }'},
            headers=headers,
            timeout=10,
        )

    assert rest.status_code == 200
    assert rest.json() == {"events": [], "next_cursor": None}
    assert graphql.json() == {"data": {"org": {"name": "acme"}}}


def _replay_curl(line: str) -> httpx.Response:
    """Send the request a printed `curl` line describes."""
    words = shlex.split(line)
    method, headers, body = "GET", {}, None
    options = iter(words[1:-1])
    for option in options:
        value = next(options)
        if option == "-X":
            method = value
        elif option == "-H":
            name, _, header_value = value.partition(": ")
            headers[name] = header_value
        elif option == "-d":
            body = value.encode()
        else:
            pytest.fail(f"unexpected curl option {option}")
    return httpx.request(method, words[-1], headers=headers, content=body, timeout=10)


def _wait_for_key(stdout: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = re.search(r"API key \(shown once\): (\S+)", stdout.read_text())
        if found:
            return found.group(1)
        assert process.poll() is None, "the demo exited before printing its key"
        time.sleep(0.2)
    pytest.fail(f"the demo printed no key within {START_TIMEOUT}s")


def test_demo_fills_a_fresh_database_and_serves_its_curl_lines(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)
    port = _free_port()
    args = ["demo", "--events", "300", "--port", str(port)]

    with running(args, database_url=url, logs=tmp_path) as process:
        key = _wait_for_key(tmp_path / "stdout", process)
        wait_until_serving(process, f"http://127.0.0.1:{port}")
        printed = (tmp_path / "stdout").read_text().splitlines()
        curls = [line.strip() for line in printed if line.strip().startswith("curl ")]
        answers = [_replay_curl(line) for line in curls]
        headers = json.loads(next(line for line in printed if line.strip().startswith('{"Auth')))
        query = next(line.strip() for line in printed if line.strip().startswith("query"))
        graphql = httpx.post(
            f"http://127.0.0.1:{port}/graphql", json={"query": query}, headers=headers, timeout=10
        )
        everything = httpx.get(
            f"http://127.0.0.1:{port}/orgs/demo/events?limit=1000",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ).json()["events"]

    assert len(curls) == 8
    assert [answer.status_code for answer in answers] == [200] * 8
    lists = [answer.json()["events"] for answer in answers[:7]]
    assert all(lists)
    by_access, by_block, by_create, by_expire, by_fail = lists[1:6]
    assert {event["event_type"] for event in by_access} == {"ACCESS"}
    assert {event["event_type"] for event in by_block} == {"BLOCK"}
    assert {event["event_type"] for event in by_create} == {"CREATE"}
    assert {event["event_type"] for event in by_expire} == {"EXPIRE"}
    assert {event["status"] for event in by_fail} == {"FAILURE"}
    assert len({event["container_id"] for event in lists[6]}) == 1
    assert answers[7].json()["message"] == "Event logged successfully"
    assert len(everything) == 300 + 1  # the 300 demo events and the one the POST line logged

    edges = graphql.json()["data"]["org"]["events"]["edges"]
    assert edges and {edge["node"]["status"] for edge in edges} == {"FAILURE"}

    output = (tmp_path / "stdout").read_text() + (tmp_path / "stderr").read_text()
    log_lines = [line for line in output.splitlines() if re.match(r"(INFO|WARNING|ERROR):", line)]
    assert any('"GET /orgs/demo/' in line for line in log_lines)
    assert not [line for line in log_lines if key in line]


async def test_orgs_create_and_keys_list_on_postgresql() -> None:
    """PostgreSQL variant: the CLI against the suite's PostgreSQL database, emptied first."""
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"PostgreSQL not configured: set {POSTGRES_URL_VARIABLE} (.ci/run does)")
    db = Database(url)
    try:
        await db.drop_schema()
    except (OSError, SQLAlchemyError) as error:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL_VARIABLE} not reachable: {error}")
    finally:
        await db.dispose()

    key = create_org_key("acme", url)
    listed = run_cli("keys", "list", "acme", database_url=url)

    assert listed.returncode == 0, listed.stderr
    assert key[:10] + "..." in listed.stdout
    assert await status_with_key(url, key) == 200
    _assert_clean_failure(run_cli("orgs", "create", "acme", database_url=url))
