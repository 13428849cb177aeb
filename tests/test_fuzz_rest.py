"""Property-based fuzzing of the REST shim against its own /openapi.json (schemathesis).

Every operation of the document gets generated requests, valid and invalid, sent in-process to
the ASGI app with org `acme`'s key, with no key and with a wrong key. Each answer must be no
5xx, a documented status and content type, a body and headers matching the documented schemas.
`EVENTS_GATEWAY_FUZZ_EXAMPLES` (default 10) sets the examples per operation and mode; the
nightly run raises it. `pytest -s` prints how many requests were sent.
"""

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi import checks as openapi_checks
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.config import Settings
from gateway.openapi import openapi_document
from storage.database import Database
from storage.domain import EventStatus, EventType
from tests.factories import auth, make_org

EXAMPLES = int(os.environ.get("EVENTS_GATEWAY_FUZZ_EXAMPLES", "10"))
ORG_ID = "acme"
WRONG_KEY = "not-a-key-of-this-gateway"

CHECKS = [
    checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.negative_data_rejection,
]
# Not `positive_data_acceptance`: JSON Schema cannot say that a cursor is one this API issued,
# that `until` is not before `since`, or that an NDJSON string holds at least one event, so
# schema-valid requests are rightly refused with 400 (each such refusal names its field).

# Answers by key mode and status, counted around each call: `-s` prints them.
answers: dict[str, Counter[int]] = {
    "valid key": Counter(),
    "no key": Counter(),
    "wrong key": Counter(),
}


async def _seed(url: str) -> str:
    db = Database(url)
    try:
        await db.create_schema()
        return await make_org(db, ORG_ID)
    finally:
        await db.dispose()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A fresh SQLite file holding org `acme`; its URL and acme's key."""
    path: Path = tmp_path_factory.mktemp("fuzz") / "events.db"
    url = f"sqlite+aiosqlite:///{path}"
    # Seeded in a loop of its own and disposed: the app opens its own connections in the loop
    # schemathesis serves it from.
    return url, asyncio.run(_seed(url))


@pytest.fixture(scope="module")
def app(seeded: tuple[str, str]) -> Iterator[Starlette]:
    """The gateway on the seeded file, served in-process by schemathesis' ASGI transport."""
    url, _key = seeded
    app = create_app(Settings(database_url=url, key_cache_seconds=0))
    served = schemathesis.openapi.from_asgi("/openapi.json", app).raw_schema
    assert served == openapi_document()
    yield app
    shutdown_lifespans()


@pytest.fixture(scope="module", autouse=True)
def report_requests() -> Iterator[None]:
    yield
    sent = sum(sum(by_status.values()) for by_status in answers.values())
    print(f"\nschemathesis sent {sent} requests")
    for mode, by_status in answers.items():
        print(f"  {mode}: {sum(by_status.values())}, by status {dict(sorted(by_status.items()))}")
    valid = answers["valid key"]
    if valid and not any(200 <= status < 300 for status in valid):
        pytest.fail("no request with acme's key was answered 2xx: the fuzzing never got past auth")


# Batch bodies may be NDJSON, which the document describes as one string.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")
schema = schemathesis.openapi.from_dict(openapi_document())
# Every path names acme, so a request with acme's key reaches the handlers' parsing.
schema.config.update(parameters={"org_id": ORG_ID})


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def call_and_validate(
    case: schemathesis.Case, app: Starlette, mode: str, headers: dict[str, str]
) -> None:
    response = case.call(headers=headers, app=app)
    answers[mode][response.status_code] += 1
    case.validate_response(
        response, CHECKS, headers=headers, transport_kwargs={"app": app, "headers": headers}
    )


@schema.parametrize()
@FUZZ_SETTINGS
def test_rest_shim_conforms_with_the_orgs_key(
    case: schemathesis.Case, app: Starlette, seeded: tuple[str, str]
) -> None:
    call_and_validate(case, app, "valid key", auth(seeded[1]))


@schema.parametrize()
@FUZZ_SETTINGS
def test_rest_shim_conforms_without_a_key(case: schemathesis.Case, app: Starlette) -> None:
    call_and_validate(case, app, "no key", {})


@schema.parametrize()
@FUZZ_SETTINGS
def test_rest_shim_conforms_with_a_wrong_key(case: schemathesis.Case, app: Starlette) -> None:
    call_and_validate(case, app, "wrong key", auth(WRONG_KEY))


def test_new_events_document_the_event_types_and_statuses_the_server_accepts() -> None:
    # Found by fuzzing: with `event_type` and `status` documented as any string, schema-valid
    # events were refused with 400, and invalid values were never generated to be refused.
    new_event = openapi_document()["components"]["schemas"]["NewEvent"]["properties"]
    for name, members in (("event_type", EventType), ("status", EventStatus)):
        values = [member.value for member in members]
        assert set(new_event[name]["enum"]) == {*values, *(value.lower() for value in values)}
