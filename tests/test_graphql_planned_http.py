"""A query text a compiled plan has answered is answered again straight from its plan
(GraphQLApp._answer_planned): the same status, headers and body as Strawberry's view gives
with compiled plans off, errors included, and the view's own path whenever the text, its
variables or the request are anything but plain."""

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings
from schema import GatewaySchema
from schema.execution import COMPILED_PLANS
from tests.factories import auth, make_events
from tests.test_graphql_compiled import SHAPES, SHIPPED, seed, shipped


@pytest.fixture
async def seeded(db, acme_key, other_key):
    await seed(db)
    return db


def _client(db: Any, *, compiled: bool) -> httpx.AsyncClient:
    settings = Settings(database_url=db.url, key_cache_seconds=0, graphql_compiled=compiled)
    app = create_app(settings, db=db)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def planned(seeded):
    async with _client(seeded, compiled=True) as client:
        yield client


@pytest.fixture
async def reference(seeded):
    async with _client(seeded, compiled=False) as client:
        yield client


@pytest.fixture
def taken(monkeypatch) -> list[bool]:
    """One entry per request that reached answer_planned with compiled plans on: True when
    it answered."""
    seen: list[bool] = []
    original = GatewaySchema.answer_planned

    async def spy(self: GatewaySchema, *args: Any) -> Any:
        data = await original(self, *args)
        if self._schema in COMPILED_PLANS:
            seen.append(data is not None)
        return data

    monkeypatch.setattr(GatewaySchema, "answer_planned", spy)
    return seen


def _seen(response: httpx.Response) -> tuple[int, str | None, str | None, bytes]:
    return (
        response.status_code,
        response.headers.get("content-type"),
        response.headers.get("content-length"),
        response.content,
    )


async def _post(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/graphql", json=body, headers=auth(key))


def _body(query: str, variables: dict[str, Any] | None, name: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"query": query}
    if variables is not None:
        body["variables"] = variables
    if name is not None:
        body["operationName"] = name
    return body


@pytest.mark.parametrize(("name", "variables"), SHIPPED, ids=lambda v: str(v)[:50])
async def test_a_shipped_query_sent_again_is_answered_by_its_plan_as_the_view_answers(
    planned, reference, acme_key, taken, name, variables
):
    body = _body(shipped(name), variables, name)
    first = await _post(planned, acme_key, body)
    again = await _post(planned, acme_key, body)
    expected = await _post(reference, acme_key, body)

    assert expected.status_code == 200 and "errors" not in expected.json()
    assert _seen(first) == _seen(again) == _seen(expected)
    assert taken == [False, True]  # the first is learnt through the view, the second planned


@pytest.mark.parametrize("shape", SHAPES)
async def test_every_shape_sent_again_answers_as_the_view_does(planned, reference, acme_key, shape):
    body = _body(SHAPES[shape], None, None)
    await _post(planned, acme_key, body)

    assert _seen(await _post(planned, acme_key, body)) == _seen(
        await _post(reference, acme_key, body)
    )


async def test_times_at_the_calendars_ends_and_to_the_microsecond_answer_as_the_view_does(
    planned, reference, seeded, acme_key, taken
):
    # The planned path leaves UTC datetimes for orjson to write (schema.compiled.run):
    # PostgreSQL reads the last moment back as 'infinity' without a zone, a time whose
    # microseconds are zero is written without them.
    moments = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(2024, 2, 29, 23, 59, 59, 1, tzinfo=UTC),
        datetime(2024, 3, 1, 0, 0, 0, 999_999, tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
    ]
    await make_events(seeded, "acme", [("edge", {"timestamp": at}) for at in moments])
    body = _body(shipped("OrgEvents"), {"orgId": "acme", "first": 50}, "OrgEvents")
    await _post(planned, acme_key, body)

    again, expected = await _post(planned, acme_key, body), await _post(reference, acme_key, body)

    assert _seen(again) == _seen(expected)
    assert taken == [False, True]
    times = {edge["node"]["timestamp"] for edge in again.json()["data"]["org"]["events"]["edges"]}
    assert {"0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999+00:00"} <= times
    assert "2024-02-29T23:59:59.000001+00:00" in times


async def test_only_texts_a_plan_answered_take_the_planned_path(planned, acme_key, taken):
    for shape in ("introspection", "another org", "bad first", "nested container events"):
        body = _body(SHAPES[shape], None, None)
        await _post(planned, acme_key, body)
        await _post(planned, acme_key, body)

    assert taken == [False] * 8


async def test_bad_variables_for_a_remembered_text_get_the_views_error(
    planned, reference, acme_key, taken
):
    await _post(planned, acme_key, _body(shipped("OrgEvents"), {"orgId": "acme"}, "OrgEvents"))
    for variables in (
        {"orgId": "acme", "first": "ten"},
        {"orgId": "acme", "order": "SIDEWAYS"},
        {"orgId": "acme", "first": 0},
        {"orgId": "acme", "after": "not a cursor"},
        {"orgId": "other"},
        {},
    ):
        body = _body(shipped("OrgEvents"), variables, "OrgEvents")
        answered = await _post(planned, acme_key, body)
        expected = await _post(reference, acme_key, body)
        assert answered.json()["errors"], variables
        assert _seen(answered) == _seen(expected), variables

    assert taken == [False] * 7


async def test_a_remembered_text_under_another_key_is_refused_as_the_view_refuses(
    planned, reference, acme_key, other_key, taken
):
    body = _body(SHAPES["leaves"], None, None)
    await _post(planned, acme_key, body)

    refused = await _post(planned, other_key, body)
    expected = await _post(reference, other_key, body)

    assert refused.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert _seen(refused) == _seen(expected)
    assert taken == [False, False]


async def test_the_operation_name_is_part_of_what_is_remembered(
    planned, reference, acme_key, taken
):
    document = 'query A { org(id: "acme") { id } } query B { org(id: "acme") { name } }'
    await _post(planned, acme_key, _body(document, None, "A"))

    for name in (None, "B", "C"):
        answered = await _post(planned, acme_key, _body(document, None, name))
        expected = await _post(reference, acme_key, _body(document, None, name))
        assert _seen(answered) == _seen(expected), name
    assert taken == [False, False, False, False]
    assert (await _post(planned, acme_key, _body(document, None, "A"))).json() == {
        "data": {"org": {"id": "acme"}}
    }
    assert taken[-1] is True


@pytest.mark.parametrize(
    "extra",
    [{"extensions": {}}, {"documentId": "OrgEvents"}, {"variables": [1]}],
    ids=["extensions", "documentId", "variables list"],
)
async def test_a_body_with_anything_more_takes_the_views_path(
    planned, reference, acme_key, taken, extra
):
    body = _body(SHAPES["leaves"], None, None)
    await _post(planned, acme_key, body)

    answered = await _post(planned, acme_key, {**body, **extra})

    assert _seen(answered) == _seen(await _post(reference, acme_key, {**body, **extra}))
    assert taken == [False]  # the second never reached the planned path


async def test_with_compiled_plans_off_nothing_is_remembered(reference, acme_key, taken):
    body = _body(SHAPES["leaves"], None, None)
    for _ in range(2):
        assert "errors" not in (await _post(reference, acme_key, body)).json()

    assert taken == []


async def test_kept_coercions_tell_values_of_other_types_apart(planned, reference, acme_key, taken):
    # Coerced variables are kept by their raw values (Plans.coerced), and in Python
    # 1 == 1.0 == True: each must still be coerced, and answered, as the view does.
    query = shipped("OrgEvents")
    answers = []
    for first in (1, 1, True, 1.0, 1.5, "1", 2, 1):
        body = _body(query, {"orgId": "acme", "first": first}, "OrgEvents")
        answered = await _post(planned, acme_key, body)
        assert _seen(answered) == _seen(await _post(reference, acme_key, body)), first
        answers.append("errors" in answered.json())

    assert answers == [False, False, True, False, True, True, False, False]
    # Learnt through the view, then planned; refused values go the view's way each time.
    assert taken == [False, True, False, True, False, False, True, True]


async def test_a_long_or_structured_variable_is_coerced_afresh_each_time(
    planned, reference, acme_key, taken
):
    query = shipped("OrgEvents")
    for variables in (
        {"orgId": "acme", "first": 2},
        {"orgId": "acme", "first": 2, "after": "x" * 300},
        {"orgId": "acme", "first": [2]},
        {"orgId": "acme", "first": 2},
    ):
        body = _body(query, variables, "OrgEvents")
        answered = await _post(planned, acme_key, body)
        assert _seen(answered) == _seen(await _post(reference, acme_key, body)), variables

    assert taken == [False, False, False, True]
