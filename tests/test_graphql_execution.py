"""The executor's fast path for plain leaf fields answers exactly as graphql-core's own path."""

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import pytest
import strawberry
from graphql import GraphQLResolveInfo
from strawberry.extensions import SchemaExtension
from strawberry.scalars import JSON

from schema import build_schema
from schema.context import Context
from schema.execution import GatewayExecutor
from schema.mutation import Mutation
from schema.query import Query as GatewayQuery
from tests.factories import BASE_TIME, make_events


@strawberry.enum
class Shade(Enum):
    LIGHT = "light"
    DARK = "dark"


@strawberry.type
class Swatch:
    name: str
    label: str | None
    shade: Shade
    made_at: datetime
    extra: JSON | None
    count: int

    @strawberry.field
    def shout(self) -> str:
        return self.name.upper()


@strawberry.type
class Query:
    """Every field answers from the list the test puts in the context."""

    @strawberry.field
    def swatches(self, info: strawberry.Info) -> list[Swatch]:
        return info.context["swatches"]()

    @strawberry.field
    def maybe_swatches(self, info: strawberry.Info) -> list[Swatch | None]:
        return info.context["swatches"]()

    @strawberry.field
    def last_swatch(self, info: strawberry.Info) -> Swatch | None:
        return info.context["swatches"]()[-1]


def swatch(**fields: Any) -> Swatch:
    values: dict[str, Any] = {
        "name": "sky",
        "label": "Sky blue",
        "shade": Shade.LIGHT,
        "made_at": datetime(2023, 11, 18, 12, 0, 0, 123456, tzinfo=UTC),
        "extra": {"hex": "#87ceeb", "tags": ["calm"]},
        "count": 3,
    }
    values.update(fields)
    return Swatch(**values)


def ready(value: str) -> "asyncio.Future[str]":
    """An awaitable that may be awaited any number of times, or never."""
    future = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


# Each case is built anew per execution, so each executor gets values of its own.
CASES: dict[str, Callable[[], list[Any]]] = {
    "plain": lambda: [swatch(), swatch(name="ink", label=None, shade=Shade.DARK, extra=None)],
    "null for a non-null leaf": lambda: [swatch(), swatch(name=None)],
    "null item": lambda: [swatch(), None],
    "awaitable value": lambda: [swatch(name=ready("dusk"))],
    "value the scalar refuses": lambda: [swatch(count="many")],
    "value that is no member of the enum": lambda: [swatch(shade="purple")],
    "source without the attribute": lambda: [swatch(), object()],
    "exception as a value": lambda: [swatch(label=ValueError("label unavailable"))],
}

LEAVES = "name label shade madeAt extra count"
QUERIES = {
    "list of leaves": f"{{ swatches {{ {LEAVES} }} }}",
    "nullable items": f"{{ maybeSwatches {{ {LEAVES} }} }}",
    "single object": f"{{ lastSwatch {{ {LEAVES} }} }}",
    "leaves beside a resolver, with aliases": (
        "{ maybeSwatches { shout title: name name count again: shout } }"
    ),
    "fragments and __typename": """
        query { maybeSwatches { ...Parts __typename ... on Swatch { shade name } } }
        fragment Parts on Swatch { name madeAt }
    """,
    "skip and include": """
        query ($yes: Boolean!) {
          maybeSwatches { name @include(if: $yes) label @skip(if: $yes) count @include(if: false) }
        }
    """,
}


async def answer(
    executor: type[GatewayExecutor] | None, query: str, case: str
) -> tuple[str, list[Any]]:
    """The data, as JSON text so key order counts, and the errors, as a client sees them."""
    schema = strawberry.Schema(query=Query, execution_context_class=executor)
    result = await schema.execute(
        query, variable_values={"yes": True}, context_value={"swatches": CASES[case]}
    )
    return json.dumps(result.data), [error.formatted for error in result.errors or []]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("query", QUERIES.values(), ids=QUERIES)
async def test_every_answer_equals_graphql_cores_own(query, case):
    assert await answer(GatewayExecutor, query, case) == await answer(None, query, case)


async def test_a_null_for_a_non_null_leaf_nulls_its_item_with_the_fields_path():
    data, errors = await answer(
        GatewayExecutor, QUERIES["nullable items"], "null for a non-null leaf"
    )

    assert json.loads(data)["maybeSwatches"][1] is None
    assert errors == [
        {
            "message": "Cannot return null for non-nullable field Swatch.name.",
            "locations": [{"line": 1, "column": 19}],
            "path": ["maybeSwatches", 1, "name"],
        }
    ]


async def test_a_null_in_a_list_of_non_null_items_nulls_the_whole_answer():
    data, errors = await answer(
        GatewayExecutor, QUERIES["list of leaves"], "null for a non-null leaf"
    )

    assert json.loads(data) is None
    assert [error["path"] for error in errors] == [["swatches", 1, "name"]]


async def test_enums_answer_their_names_times_iso_8601_and_json_as_is():
    data, errors = await answer(GatewayExecutor, QUERIES["list of leaves"], "plain")

    assert errors == []
    assert json.loads(data)["swatches"] == [
        {
            "name": "sky",
            "label": "Sky blue",
            "shade": "LIGHT",
            "madeAt": "2023-11-18T12:00:00.123456+00:00",
            "extra": {"hex": "#87ceeb", "tags": ["calm"]},
            "count": 3,
        },
        {
            "name": "ink",
            "label": None,
            "shade": "DARK",
            "madeAt": "2023-11-18T12:00:00.123456+00:00",
            "extra": None,
            "count": 3,
        },
    ]


def count_resolve_infos(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the fields graphql-core builds a GraphQLResolveInfo for, from now on."""
    built: list[str] = []
    original = GatewayExecutor.build_resolve_info

    def counting(self: GatewayExecutor, *args: Any) -> GraphQLResolveInfo:
        info = original(self, *args)
        built.append(info.field_name)
        return info

    monkeypatch.setattr(GatewayExecutor, "build_resolve_info", counting)
    return built


async def test_plain_leaves_are_read_without_a_resolve_info(monkeypatch):
    built = count_resolve_infos(monkeypatch)

    await answer(GatewayExecutor, QUERIES["leaves beside a resolver, with aliases"], "plain")

    assert built == ["maybeSwatches", "shout", "shout", "shout", "shout"]


class SeenFields(SchemaExtension):
    """Field middleware: records every field it resolves."""

    seen: list[str] = []

    def resolve(
        self,
        _next: Callable[..., Any],
        root: Any,
        info: GraphQLResolveInfo,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        self.seen.append(info.field_name)
        return _next(root, info, *args, **kwargs)


async def test_field_middleware_still_sees_every_leaf(monkeypatch):
    monkeypatch.setattr(SeenFields, "seen", [])
    schema = strawberry.Schema(
        query=Query, extensions=[SeenFields], execution_context_class=GatewayExecutor
    )

    result = await schema.execute(
        "{ swatches { name count } }", context_value={"swatches": CASES["plain"]}
    )

    assert result.data == {"swatches": [{"name": "sky", "count": 3}, {"name": "ink", "count": 3}]}
    assert SeenFields.seen == ["swatches", "name", "count", "name", "count"]


async def test_a_gateway_page_of_events_reads_every_leaf_on_the_fast_path(
    db, acme_key, monkeypatch
):
    await make_events(db, "acme", [("c1", {}), ("c2", {"details": {"ip": "::1"}})])
    built = count_resolve_infos(monkeypatch)
    query = """
      { org(id: "acme") { events(first: 100) {
          nodes { id containerId eventType status timestamp receivedAt actor details }
      } } }
    """

    # graphql-core's path (what a document the compiler leaves answers by); a compiled plan
    # builds no Info at all.
    schema = build_schema(compiled=False)
    result = await schema.execute(query, context_value=Context(db=db, org_id="acme"))

    assert result.errors is None
    assert len(result.data["org"]["events"]["nodes"]) == 2
    assert built == ["org", "events", "nodes"]


async def test_an_events_page_answers_as_graphql_cores_own_executor(db, acme_key):
    await make_events(
        db,
        "acme",
        [
            ("c1", {"actor": "alice", "details": {"ip": "::1", "tries": [1, 2]}}),
            ("c2", {"event_type": "BLOCK", "status": "FAILURE", "timestamp": BASE_TIME}),
        ],
    )
    query = """
      { org(id: "acme") { id name events {
          nodes { id containerId eventType status timestamp receivedAt actor details }
          edges { cursor node { id eventType container { id createdAt } } }
          pageInfo { hasNextPage endCursor }
      } } }
    """
    reference = strawberry.Schema(query=GatewayQuery, mutation=Mutation)

    fast = await build_schema().execute(query, context_value=Context(db=db, org_id="acme"))
    plain = await reference.execute(query, context_value=Context(db=db, org_id="acme"))

    assert fast.errors is None
    assert json.dumps(fast.data) == json.dumps(plain.data)
