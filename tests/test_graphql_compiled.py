"""Compiled plans (schema.compiled) answer exactly as graphql-core does: the same JSON, byte
for byte, errors included, for the shipped queries, hand-written shapes and generated ones."""

import asyncio
from contextlib import aclosing, suppress
from datetime import UTC
from pathlib import Path
from typing import Any

import graphql
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import strategies as gql_st

import schema.compiled as compiled_module
from schema import build_schema
from schema.context import Context
from schema.execution import LIVE_SINK, GatewayExecutor
from schema.scalars import serialize_datetime
from schema.subscription import LiveContext
from storage.broker import Broker
from storage.cursors import encode_event_cursor
from storage.keys import Scope
from storage.models import _sqlite_utc_text
from tests.factories import make_events

QUERIES = Path(__file__).resolve().parent.parent / "queries"
COMPILED, REFERENCE = build_schema(), build_schema(compiled=False)


async def seed(db: Any) -> None:
    specs: list[tuple[str, dict[str, Any]]] = []
    for number in range(30):
        fields: dict[str, Any] = {
            "event_type": ["ACCESS", "BLOCK", "CREATE", "EXPIRE"][number % 4],
            "status": "FAILURE" if number % 3 == 0 else "SUCCESS",
        }
        if number % 2:
            fields["actor"] = f"user{number}@example.com"
        if number % 5 == 0:
            fields["details"] = {"ip": "10.0.0.1", "n": number, "tags": ["a", None, 1.5]}
        specs.append((f"c{number % 4}", fields))
    await make_events(db, "acme", specs)
    await make_events(db, "other", [("c1", {})])


@pytest.fixture
async def seeded_db(db, acme_key, other_key):
    await seed(db)
    return db


def answer(result: Any) -> bytes:
    """The response body as the gateway writes it; errors by path, as graphql-core lists
    those of concurrent fields in the order they happen to fail."""
    body: dict[str, Any] = {"data": result.data}
    if result.errors:
        errors = [error.formatted for error in result.errors]
        body["errors"] = sorted(errors, key=lambda error: orjson.dumps(error.get("path")))
    return orjson.dumps(body)


def compiled_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the operations answered by a plan (without falling back)."""
    runs: list[int] = []
    original = GatewayExecutor._execute_compiled
    fallbacks: list[int] = []
    super_execute = graphql.execution.executor.Executor.execute_operation

    async def counting(self: GatewayExecutor, plan: Any, serially: Any) -> Any:
        before = len(fallbacks)
        result = await original(self, plan, serially)
        if len(fallbacks) == before:
            runs.append(1)
        return result

    def reference(self: Any, *args: Any, **kwargs: Any) -> Any:
        fallbacks.append(1)
        return super_execute(self, *args, **kwargs)

    monkeypatch.setattr(GatewayExecutor, "_execute_compiled", counting)
    monkeypatch.setattr(graphql.execution.executor.Executor, "execute_operation", reference)
    return runs


async def both(
    db: Any,
    query: str,
    variables: dict[str, Any] | None = None,
    operation_name: str | None = None,
    scopes: frozenset[Scope] | None = None,
) -> tuple[bytes, bytes]:
    answers = []
    for schema in (COMPILED, REFERENCE):
        context = Context(db=db, org_id="acme")
        if scopes is not None:
            context.scopes = scopes
        result = await schema.execute(
            query, variable_values=variables, context_value=context, operation_name=operation_name
        )
        answers.append(answer(result))
    return answers[0], answers[1]


def shipped(name: str) -> str:
    return (QUERIES / f"{name}.graphql").read_text()


SHIPPED = [
    ("OrgEvents", {"orgId": "acme"}),
    ("OrgEvents", {"orgId": "acme", "first": 5, "order": "ASC"}),
    ("OrgEvents", {"orgId": "acme", "filter": "FAIL", "containerId": "c1", "first": 3}),
    (
        "OrgEvents",
        {"orgId": "acme", "since": "2023-11-18T12:05:00Z", "until": "2023-11-18T12:20:00Z"},
    ),
    ("OrgEvents", {"orgId": "acme", "first": 4, "after": encode_event_cursor(20)}),
    ("FailedEvents", {"orgId": "acme"}),
    ("AccessEvents", {"orgId": "acme"}),
    ("BlockEvents", {"orgId": "acme"}),
    ("CreateEvents", {"orgId": "acme"}),
    ("ExpireEvents", {"orgId": "acme"}),
    ("ContainerEvents", {"orgId": "acme", "containerId": "c2"}),
    ("ContainerEvents", {"orgId": "acme", "containerId": "c2", "filter": "ACCESS", "first": 2}),
    ("Containers", {"orgId": "acme"}),
    (
        "EventCounts",
        {"orgId": "acme", "since": "2023-11-18T00:00:00Z", "until": "2023-11-19T00:00:00Z"},
    ),
]


@pytest.mark.parametrize(("name", "variables"), SHIPPED, ids=lambda v: str(v)[:50])
async def test_every_shipped_query_answers_as_graphql_core_does(
    seeded_db, monkeypatch, name, variables
):
    runs = compiled_runs(monkeypatch)
    compiled, reference = await both(seeded_db, shipped(name), variables)
    assert b'"errors"' not in reference, reference
    assert compiled == reference
    assert runs == [1]  # answered by its plan


# Shapes a plan takes, and those it must leave to graphql-core, with what they exercise.
SHAPES = {
    "leaves": (
        '{ org(id: "acme") { events { edges { node { id eventType status timestamp '
        "actor } } pageInfo { hasNextPage endCursor } } } }"
    ),
    "container": (
        '{ org(id: "acme") { events(first: 7) { edges { cursor node { id container { '
        "id createdAt lastEventAt __typename } } } } } }"
    ),
    "total": '{ org(id: "acme") { events(filter: FAIL) { totalCount edges { node { id } } } } }',
    "nodes": (
        '{ org(id: "acme") { id name createdAt events(first: 3) { nodes { id '
        "containerId receivedAt details keyId cursor } } } }"
    ),
    "typenames": (
        '{ __typename org(id: "acme") { __typename events(first: 2) { __typename edges '
        "{ __typename node { __typename } } pageInfo { __typename } } } }"
    ),
    "aliases": (
        '{ a: org(id: "acme") { x: events(first: 2) { e: edges { c: cursor n: node { '
        "i: id } } } y: events(first: 1, order: ASC) { nodes { id } } } b: org(id: "
        '"acme") { name } }'
    ),
    "merged": (
        '{ org(id: "acme") { events(first: 2) { edges { node { id } } edges { node { '
        "status id } } } } }"
    ),
    "fragments": (
        'query Q { org(id: "acme") { ...O } } fragment O on Organization { id '
        "events(first: 3) { ...C } } fragment C on EventConnection { edges { node { "
        "...E ... on Event { actor } } } pageInfo { ... on PageInfo { startCursor } } "
        "} fragment E on Event { id eventType }"
    ),
    "container by id": (
        '{ org(id: "acme") { container(id: "c3") { id createdAt lastEventAt '
        "events(first: 2, filter: ACCESS) { edges { node { id } } totalCount pageInfo "
        "{ hasNextPage hasPreviousPage startCursor endCursor } } } } }"
    ),
    "empty page": (
        '{ org(id: "acme") { events(since: "2030-01-01T00:00:00Z") { edges { cursor } '
        "pageInfo { hasNextPage hasPreviousPage startCursor endCursor } totalCount } } "
        "}"
    ),
    "page after": (
        '{ org(id: "acme") { events(first: 3, after: "ZTE") { pageInfo { '
        "hasPreviousPage startCursor endCursor } } } }"
    ),
    "containers": (
        '{ org(id: "acme") { containers(first: 2) { __typename edges { __typename '
        "cursor node { id createdAt lastEventAt } } pageInfo { hasNextPage "
        "hasPreviousPage startCursor endCursor } nodes { id } } } }"
    ),
    "containers after": (
        '{ org(id: "acme") { containers(after: "YzE") { edges { cursor node { id } } '
        "pageInfo { hasPreviousPage startCursor endCursor } } } }"
    ),
    "counts by type": (
        '{ org(id: "acme") { eventCounts(since: "2023-11-18T00:00:00Z", until: '
        '"2023-11-19T00:00:00Z", by: TYPE, filter: FAIL) { __typename key count } } }'
    ),
    "counts": (
        '{ org(id: "acme") { eventCounts(since: "2023-11-18T00:00:00Z", until: '
        '"2023-11-19T00:00:00Z", by: CONTAINER) { key count } } }'
    ),
    # Left to graphql-core, answered all the same:
    "nested container events": (
        '{ org(id: "acme") { events(first: 2) { nodes { container { events(first: 1) { '
        "nodes { id } } } } } } }"
    ),
    "introspection": '{ __schema { queryType { name } } org(id: "acme") { id } }',
    # Errors: a plan declines, graphql-core answers with its own paths and codes.
    "another org": '{ org(id: "other") { id events { nodes { id } } } }',
    "bad first": '{ org(id: "acme") { id events(first: 0) { nodes { id } } } }',
    "bad cursor": '{ org(id: "acme") { events(after: "nope") { nodes { id } } } }',
    "bad window": (
        '{ org(id: "acme") { events(since: "2024-01-01T00:00:00Z", until: '
        '"2023-01-01T00:00:00Z") { nodes { id } } } }'
    ),
    "bad container id": '{ org(id: "acme") { events(containerId: "no spaces") { nodes { id } } } }',
    "bad containers first": '{ org(id: "acme") { containers(first: 5000) { nodes { id } } } }',
    "bad containers cursor": '{ org(id: "acme") { containers(after: "ZTE") { nodes { id } } } }',
    "bad counts window": (
        '{ org(id: "acme") { eventCounts(since: "2023-11-19T00:00:00Z", until: '
        '"2023-11-18T00:00:00Z", by: HOUR) { key } } }'
    ),
    "too many buckets": (
        '{ org(id: "acme") { eventCounts(since: "2000-01-01T00:00:00Z", until: '
        '"2023-11-18T00:00:00Z", by: HOUR) { key } } }'
    ),
    "unknown container": '{ org(id: "acme") { id container(id: "c9") { id } } }',
    "two orgs one bad": '{ a: org(id: "acme") { id } b: org(id: "nope") { id } }',
}


@pytest.mark.parametrize("name", SHAPES)
async def test_every_shape_answers_as_graphql_core_does(seeded_db, name):
    compiled, reference = await both(seeded_db, SHAPES[name])
    assert compiled == reference


DIRECTIVES = """
query D($withNode: Boolean!, $skipCursor: Boolean = false, $first: Int = 2) {
  org(id: "acme") {
    events(first: $first) {
      edges {
        cursor @skip(if: $skipCursor)
        node @include(if: $withNode) { id ...F @include(if: $withNode) }
      }
      totalCount @include(if: $withNode)
    }
  }
}
fragment F on Event { status container @skip(if: $skipCursor) { id } }
"""


@pytest.mark.parametrize("with_node", [True, False])
@pytest.mark.parametrize("skip_cursor", [True, False, None])
async def test_include_and_skip_follow_the_variables_of_each_request(
    seeded_db, monkeypatch, with_node, skip_cursor
):
    runs = compiled_runs(monkeypatch)
    variables: dict[str, Any] = {"withNode": with_node, "first": 3}
    if skip_cursor is not None:
        variables["skipCursor"] = skip_cursor
    compiled, reference = await both(seeded_db, DIRECTIVES, variables)
    assert compiled == reference
    assert runs == [1]  # the plan answered; graphql-core ran only for the reference
    assert (b'"cursor"' in compiled) is (skip_cursor is not True)
    assert (b'"node"' in compiled) is with_node


async def test_a_key_without_read_scope_gets_graphql_cores_error(seeded_db):
    compiled, reference = await both(seeded_db, SHAPES["leaves"], scopes=frozenset({Scope.WRITE}))
    assert b"FORBIDDEN" in reference
    assert compiled == reference


async def test_plans_answer_the_shapes_they_take_and_leave_the_rest(seeded_db, monkeypatch):
    runs = compiled_runs(monkeypatch)
    taken = ("leaves", "container", "total", "fragments", "container by id", "containers", "counts")
    for name in taken:
        await both(seeded_db, SHAPES[name])
    assert len(runs) == len(taken)
    for name in ("nested container events", "introspection", "another org", "bad first"):
        await both(seeded_db, SHAPES[name])
    assert len(runs) == len(taken)


def _string(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[graphql.StringValueNode]:
    return strategy.map(lambda value: graphql.StringValueNode(value=value))


# Mostly the caller's own org and real containers and cursors, so that plans run.
SCALARS = {
    "ID": _string(st.sampled_from(["acme", "acme", "c1", "c2", "other"]) | st.text(max_size=5)),
    "DateTime": _string(
        st.sampled_from(["2023-11-18T12:00:00Z", "2023-11-18T12:10:00+01:00"])
        | st.datetimes(timezones=st.just(UTC)).map(lambda moment: moment.isoformat())
    ),
    "JSON": st.just(graphql.ObjectValueNode(fields=())),
}
SDL = COMPILED.as_str()


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(document=gql_st.queries(SDL, custom_scalars=SCALARS))
async def test_generated_queries_answer_as_graphql_core_does(seeded_db, document):
    compiled, reference = await both(seeded_db, document)
    assert compiled == reference or same_but_for_abandoned_siblings(compiled, reference), document


def _nulled(data: Any, path: list[Any]) -> bool:
    """Whether a field on `path`, or one above it, is null in `data`."""
    for part in path:
        if data is None:
            return True
        data = data[part] if isinstance(data, list) or part in data else None
    return data is None


def same_but_for_abandoned_siblings(first: bytes, second: bytes) -> bool:
    """The same data, and errors that differ only by some the other lacks under a field an
    error made null: graphql-core stops awaiting the other fields of an object once an error
    nulls it, so whether a slower sibling's own error is reported depends on timing, in
    either path (both fall back to graphql-core for any error)."""
    one, other = orjson.loads(first), orjson.loads(second)
    if one["data"] != other["data"]:
        return False
    errors = [[orjson.dumps(error) for error in body.get("errors", [])] for body in (one, other)]
    fewer, more = sorted(errors, key=len)
    extra = [orjson.loads(error) for error in more if error not in fewer]
    return (
        bool(fewer)
        and set(fewer) <= set(more)
        and all(_nulled(one["data"], error["path"][:-1]) for error in extra)
    )


SUBSCRIPTIONS = {
    "shipped": (shipped("LiveContainerEvents"), {}),
    "failed of c1": (shipped("LiveContainerEvents"), {"filter": "FAIL", "containerId": "c1"}),
    "shape": (
        'subscription S($show: Boolean!) { live: containerEvents(orgId: "acme",'
        ' after: "ZTA") { __typename ...F ts: timestamp container @include(if: $show)'
        " { __typename id createdAt lastEventAt } } } fragment F on Event { id cursor keyId }",
        {"show": True},
    ),
}


@pytest.mark.parametrize("name", SUBSCRIPTIONS)
async def test_subscription_events_answer_as_graphql_core_does(seeded_db, monkeypatch, name):
    query, extra = SUBSCRIPTIONS[name]
    variables = {"orgId": "acme", "after": encode_event_cursor(0), **extra}
    built = []
    original = compiled_module.event_data

    async def counting(*args: Any) -> Any:
        built.append(1)
        return await original(*args)

    monkeypatch.setattr(compiled_module, "event_data", counting)
    streams = [  # the second compiled run shares the first's
        await collected(schema, query, variables, seeded_db, EXPECTED[name])
        for schema in (COMPILED, REFERENCE, COMPILED)
    ]
    assert streams[0] == streams[1]
    assert streams[2] == streams[1]
    assert len(built) == EXPECTED[name]  # built once, for the first compiled stream only


# seed()'s acme events: 30, of which those of c1 (number % 4 == 1) that failed (number % 3 == 0).
EXPECTED = {
    "shipped": 30,
    "failed of c1": sum(1 for number in range(30) if number % 4 == 1 and number % 3 == 0),
    "shape": 30,
}


# Live delivery: events a plan builds go straight to the transport's sink (LIVE_SINK).


class Sink:
    """A transport's sink: what it was sent, in order with what the stream yielded."""

    def __init__(self, wanted: int, refuse_after: int | None = None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.wanted, self.refuse_after = wanted, refuse_after
        self.calls = 0
        self.done = asyncio.Event()

    def note(self, how: str, body: bytes) -> None:
        self.received.append((how, body))
        if len(self.received) == self.wanted:
            self.done.set()

    async def send_data(self, data: dict[str, Any]) -> bool:
        self.calls += 1
        if self.refuse_after is not None and self.calls > self.refuse_after:
            self.done.set()
            return False
        self.note("sink", orjson.dumps({"data": data}))
        return True


async def streamed(query: str, variables: dict[str, Any], db: Any, sink: Sink) -> bool:
    """Runs COMPILED's stream with `sink` set as the transport sets it, until the sink is
    done: what the stream yields is noted in the sink too. Whether the stream ended itself."""
    context = LiveContext(db=db, org_id="acme", broker=Broker(poll_seconds=60))
    token = LIVE_SINK.set(sink)
    try:
        results = await COMPILED.subscribe(query, variable_values=variables, context_value=context)

        async def drain() -> None:
            async with aclosing(results):
                async for result in results:
                    sink.note("stream", answer(result))

        task = asyncio.create_task(drain())
    finally:
        LIVE_SINK.reset(token)
    await asyncio.wait_for(sink.done.wait(), 10)
    await asyncio.sleep(0.05)  # anything more would arrive now
    ended = task.done()
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    return ended


async def collected(schema: Any, query: str, variables: dict[str, Any], db: Any, count: int):
    """The first `count` results of the subscription, as the gateway writes them."""
    context = LiveContext(db=db, org_id="acme", broker=Broker(poll_seconds=60))
    results = await schema.subscribe(query, variable_values=variables, context_value=context)
    received = []
    async with aclosing(results):
        async for result in results:
            received.append(answer(result))
            if len(received) == count:
                break
    return received


@pytest.mark.parametrize("name", SUBSCRIPTIONS)
async def test_planned_events_go_to_the_sink_as_graphql_core_would_answer_them(seeded_db, name):
    query, extra = SUBSCRIPTIONS[name]
    variables = {"orgId": "acme", "after": encode_event_cursor(0), **extra}
    sink = Sink(EXPECTED[name])

    await streamed(query, variables, seeded_db, sink)

    reference = await collected(REFERENCE, query, variables, seeded_db, EXPECTED[name])
    assert sink.received == [("sink", body) for body in reference]


async def test_an_event_the_plan_declines_is_executed_by_graphql_core_in_its_place(
    seeded_db, monkeypatch
):
    query, extra = SUBSCRIPTIONS["shape"]
    variables = {"orgId": "acme", "after": encode_event_cursor(0), **extra}
    original = compiled_module.event_data

    async def declining(plan: Any, context: Any, row: Any) -> Any:
        if row["id"] % 7 == 0:
            raise compiled_module.Declined
        return await original(plan, context, row)

    monkeypatch.setattr(compiled_module, "event_data", declining)
    sink = Sink(EXPECTED["shape"])

    await streamed(query, variables, seeded_db, sink)

    reference = await collected(REFERENCE, query, variables, seeded_db, EXPECTED["shape"])
    ids = [orjson.loads(body)["data"]["live"]["id"] for body in reference]
    assert sink.received == [
        ("stream" if int(event_id) % 7 == 0 else "sink", body)
        for event_id, body in zip(ids, reference, strict=True)
    ]


async def test_the_stream_ends_once_the_sink_cannot_send(seeded_db):
    query, extra = SUBSCRIPTIONS["shipped"]
    variables = {"orgId": "acme", "after": encode_event_cursor(0), **extra}
    sink = Sink(wanted=30, refuse_after=3)

    ended = await streamed(query, variables, seeded_db, sink)

    assert ended
    assert sink.calls == 4 and [how for how, _ in sink.received] == ["sink"] * 3


async def test_without_a_sink_every_event_is_yielded_as_before(seeded_db):
    query, extra = SUBSCRIPTIONS["shipped"]
    variables = {"orgId": "acme", "after": encode_event_cursor(0), **extra}

    received = await collected(COMPILED, query, variables, seeded_db, 30)

    assert received == await collected(REFERENCE, query, variables, seeded_db, 30)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.datetimes(timezones=st.just(UTC)), max_size=30))
def test_sqlite_times_rewritten_as_text_are_what_the_datetime_scalar_writes(moments):
    # The fast path (schema.compiled._sqlite_times_as_text) against the ordinary one: parse
    # the text storage wrote into a datetime, then serialize it.
    stored = [_sqlite_utc_text(moment) for moment in moments]
    ordinary = compiled_module._sqlite_times(lambda values: values, as_text=False)
    rewritten = compiled_module._sqlite_times(lambda values: values, as_text=True)

    assert rewritten(stored) == [serialize_datetime(moment) for moment in moments]
    assert orjson.dumps(rewritten(stored)) == orjson.dumps(ordinary(stored))


def test_sqlite_times_of_another_shape_are_parsed_as_before():
    for column in (["2024-01-01 00:00:00"], ["2024-01-01T00:00:00.000000"], [None]):
        assert compiled_module._sqlite_times_as_text(column) is None
