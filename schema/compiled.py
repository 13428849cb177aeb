"""Compiled execution of the read queries frontends send: `org { events { edges { node } } }`
and its kin, answered without a resolver call per field.

graphql-core completes every field of every event through its own Info, Path and resolver
wrapper, and `Event.container` through a DataLoader task per event: ~5 ms for a 100-event page
whose rows cost well under a millisecond to read. Here each validated operation becomes a plan
once (per document, operation and @include/@skip outcome): which storage calls it needs (the
org, a page of events, the page's containers in one statement, a count only when selected)
and, per object type, the response keys in graphql-core's order with a function that reads
each from a row. Fields are collected by graphql-core itself (`collect_fields`), so fragments,
aliases, merging and directives mean exactly what they mean there.

A plan answers only when everything goes as expected. A document it cannot plan (introspection,
mutations, `eventCounts`, nested `container { events }`...) and any request whose answer would
hold an error (an org that is not the key's, a bad argument, a missing row) run through
graphql-core as before, so errors, their paths and codes are graphql-core's own.
tests/test_graphql_compiled.py compares the two paths' JSON byte for byte.
"""

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, cast

import orjson
from graphql import (
    DirectiveNode,
    GraphQLField,
    GraphQLObjectType,
    GraphQLSchema,
    OperationDefinitionNode,
    VariableNode,
    get_nullable_type,
    visit,
)
from graphql.execution.collect_fields import (
    FieldDetailsList,
    FragmentDetails,
    GroupedFieldSet,
    collect_fields,
    collect_subfields,
)
from graphql.execution.values import VariableValues, get_argument_values, get_variable_values
from graphql.language import OperationType, Visitor

from schema.counts import EventQuery, resolve_event_counts, resolve_total_count
from schema.errors import BadUserInput
from schema.scalars import serialize_datetime
from schema.types import EVENT_STATUSES, EVENT_TYPES, _page, _page_info, _window
from storage import domain
from storage.cursors import InvalidCursor, decode_container_cursor, encode_event_cursor
from storage.events import (
    EVENT_COLUMNS,
    MAX_PAGE_SIZE,
    EventRecord,
    list_event_rows,
)
from storage.keys import Scope, allows
from storage.orgs import (
    ContainerRecord,
    get_container,
    get_containers,
    list_containers,
)

PLANS_KEPT = 256  # plans by document, like the parser and validation caches
VARIABLES_KEPT = 1024  # coerced variables by operation and raw values
# Raw variable values a coercion may be kept for: JSON's scalars (their type is part of the
# key, as 1, 1.0 and true are equal in Python), strings no longer than this.
_KEPT_SCALARS = frozenset({str, int, float, bool, type(None)})
_KEPT_STRING_CHARS = 256
EVENTS_KEPT = 256  # events' data kept for the other subscribers of the same plan
_TYPES = (
    "Organization",
    "Container",
    "ContainerConnection",
    "ContainerEdge",
    "EventConnection",
    "EventEdge",
    "Event",
    "EventCountBucket",
    "PageInfo",
)


class Unplanned(Exception):
    """The document holds something the compiler leaves to graphql-core."""


class Declined(Exception):
    """This request's answer would hold an error: graphql-core answers it instead."""


Read = Callable[[Any], Any]  # a record to a response value
Fields = tuple[tuple[str, Read], ...]
Exprs = tuple[tuple[str, str], ...]  # response keys with Python expressions (see _list_builder)
# Rows are the driver's own (storage.events.EventRows), in EVENT_COLUMNS order, from `source`:
# "sqlite" (times and details as text) or "decoded" (asyncpg's rows, EventRecords' values).
# A builder also takes whether times may stay datetimes (see `run`).
ListBuilder = Callable[
    [Sequence[Any], dict[str, ContainerRecord], tuple[str, bool]], list[dict[str, Any]]
]


def _build(fields: Fields, source: Any) -> dict[str, Any]:
    return {name: read(source) for name, read in fields}


@dataclass(frozen=True)
class EventsPlan:
    """A connection of events: the field's node (for its arguments) and what it selects."""

    field_def: GraphQLField
    details: FieldDetailsList
    edges: ListBuilder | None  # the edge list from the rows; None when not selected
    nodes: ListBuilder | None
    page_info: Fields | None  # reads a (rows, next_cursor, after) triple
    wants_total: bool
    wants_containers: bool
    keys: tuple[str, ...]  # the connection's response keys in order
    kinds: tuple[str, ...]  # each key's kind: edges, nodes, pageInfo, totalCount, __typename

    @property
    def wants_page(self) -> bool:
        """Whether anything selected reads the page's rows (`totalCount` alone does not)."""
        return self.edges is not None or self.nodes is not None or self.page_info is not None


@dataclass(frozen=True)
class Step:
    """One field of an org or container object: a leaf read or a connection/object plan."""

    key: str
    read: Read | None = None
    events: EventsPlan | None = None
    container: "ContainerPlan | None" = None
    counts: Fields | None = None  # Organization.eventCounts: each bucket's fields
    containers: "ContainersPlan | None" = None  # Organization.containers
    details: FieldDetailsList | None = None
    field_def: GraphQLField | None = None


@dataclass(frozen=True)
class ContainersPlan:
    """A connection of containers: edges read (cursor, record) pairs, nodes records,
    pageInfo a (cursors, next_cursor, after) triple."""

    edges: Fields | None
    nodes: Fields | None
    page_info: Fields | None
    keys: tuple[str, ...]
    kinds: tuple[str, ...]


@dataclass(frozen=True)
class ContainerPlan:
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class OrgPlan:
    field_def: GraphQLField
    details: FieldDetailsList
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Plan:
    root: tuple[tuple[str, OrgPlan | str], ...]  # an org plan, or a constant (__typename)


@dataclass(frozen=True, eq=False)
class EventPlan:
    """A subscription's selection of each event: built once per event for every subscriber
    of the same operation (and @include/@skip outcome), through Plans.event_data."""

    key: str  # the root field's response key
    build: ListBuilder
    wants_container: bool


class Compiler:
    """Plans one operation against the schema, as graphql-core would collect its fields."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: dict[str, FragmentDetails],
        operation: OperationDefinitionNode,
        variables: VariableValues,
    ) -> None:
        self.schema, self.fragments = schema, fragments
        self.operation, self.variables = operation, variables
        self.types = {name: schema.get_type(name) for name in _TYPES}

    def plan(self) -> Plan:
        query = self.schema.query_type
        assert query is not None
        grouped = self._checked(
            collect_fields(self.schema, self.fragments, self.variables, query, self.operation)
        )
        root: list[tuple[str, OrgPlan | str]] = []
        for key, details in grouped.items():
            name = details[0].node.name.value
            if name == "__typename":
                root.append((key, query.name))
            elif name == "org":
                field_def = query.fields[name]
                steps = self._object_steps("Organization", details, _ORG_LEAVES)
                root.append((key, OrgPlan(field_def, details, steps)))
            else:
                raise Unplanned(name)
        return Plan(tuple(root))

    def event_plan(self) -> EventPlan:
        subscription = self.schema.subscription_type
        assert subscription is not None
        grouped = self._checked(
            collect_fields(
                self.schema, self.fragments, self.variables, subscription, self.operation
            )
        )
        event_key, build, wants_container = None, None, False
        for key, details in grouped.items():
            name = details[0].node.name.value
            if name == "containerEvents" and event_key is None:
                fields, wants_container = self._event_fields(details)
                event_key, build = key, _list_builder(self.schema, fields)
            else:
                raise Unplanned(name)
        if event_key is None or build is None:
            raise Unplanned("no event")
        return EventPlan(event_key, build, wants_container)

    def _checked(self, collected: Any) -> GroupedFieldSet:
        grouped, new_defer_usages = collected[0], collected[1]
        if new_defer_usages:
            raise Unplanned("@defer")
        for details in grouped.values():
            for detail in details:
                if detail.defer_usage is not None or detail.fragment_variable_values:
                    raise Unplanned("@defer or fragment variables")
        return grouped

    def _sub(self, type_name: str, details: FieldDetailsList) -> GroupedFieldSet:
        object_type = self.types[type_name]
        assert isinstance(object_type, GraphQLObjectType)
        return self._checked(
            collect_subfields(
                self.schema, self.fragments, self.variables, self.operation, object_type, details
            )
        )

    def _object_steps(
        self, type_name: str, details: FieldDetailsList, leaves: dict[str, Read]
    ) -> tuple[Step, ...]:
        object_type = self.types[type_name]
        assert isinstance(object_type, GraphQLObjectType)
        steps = []
        for key, sub in self._sub(type_name, details).items():
            name = sub[0].node.name.value
            if name == "__typename":
                steps.append(Step(key, read=_constant(type_name)))
            elif name in leaves:
                steps.append(Step(key, read=leaves[name]))
            elif name == "events":
                steps.append(Step(key, events=self._events(object_type.fields[name], sub)))
            elif name == "eventCounts" and type_name == "Organization":
                counts = self._leaves("EventCountBucket", sub, _BUCKET_LEAVES)
                steps.append(
                    Step(key, counts=counts, details=sub, field_def=object_type.fields[name])
                )
            elif name == "containers" and type_name == "Organization":
                containers = self._containers(sub)
                steps.append(
                    Step(
                        key, containers=containers, details=sub, field_def=object_type.fields[name]
                    )
                )
            elif name == "container" and type_name == "Organization":
                container = ContainerPlan(self._object_steps("Container", sub, _CONTAINER_LEAVES))
                steps.append(
                    Step(key, container=container, details=sub, field_def=object_type.fields[name])
                )
            else:
                raise Unplanned(f"{type_name}.{name}")
        return tuple(steps)

    def _containers(self, details: FieldDetailsList) -> ContainersPlan:
        edges = nodes = page_info = None
        keys, kinds = [], []
        for key, sub in self._sub("ContainerConnection", details).items():
            name = sub[0].node.name.value
            keys.append(key)
            kinds.append(name)
            if name == "edges":
                edge_fields: list[tuple[str, Read]] = []
                for edge_key, edge_sub in self._sub("ContainerEdge", sub).items():
                    edge_name = edge_sub[0].node.name.value
                    if edge_name == "__typename":
                        edge_fields.append((edge_key, _constant("ContainerEdge")))
                    elif edge_name == "cursor":
                        edge_fields.append((edge_key, _first))
                    elif edge_name == "node":
                        node = self._leaves("Container", edge_sub, _CONTAINER_LEAVES)
                        edge_fields.append((edge_key, _second_built(node)))
                    else:
                        raise Unplanned(f"ContainerEdge.{edge_name}")
                edges = tuple(edge_fields)
            elif name == "nodes":
                nodes = self._leaves("Container", sub, _CONTAINER_LEAVES)
            elif name == "pageInfo":
                page_info = self._leaves("PageInfo", sub, _CURSORS_PAGE_INFO)
            elif name != "__typename":
                raise Unplanned(f"ContainerConnection.{name}")
        return ContainersPlan(edges, nodes, page_info, tuple(keys), tuple(kinds))

    def _events(self, field_def: GraphQLField, details: FieldDetailsList) -> EventsPlan:
        edges = nodes = page_info = None
        wants_total = wants_containers = False
        keys, kinds = [], []
        for key, sub in self._sub("EventConnection", details).items():
            name = sub[0].node.name.value
            keys.append(key)
            kinds.append(name)
            if name == "edges":
                edge_fields: list[tuple[str, str]] = []
                for edge_key, edge_sub in self._sub("EventEdge", sub).items():
                    edge_name = edge_sub[0].node.name.value
                    if edge_name == "__typename":
                        edge_fields.append((edge_key, repr("EventEdge")))
                    elif edge_name == "cursor":
                        edge_fields.append((edge_key, _EVENT_EXPRESSIONS["cursor"]))
                    elif edge_name == "node":
                        node_fields, containers = self._event_fields(edge_sub)
                        wants_containers |= containers
                        edge_fields.append((edge_key, _dict_expression(node_fields)))
                    else:
                        raise Unplanned(f"EventEdge.{edge_name}")
                edges = _list_builder(self.schema, tuple(edge_fields))
            elif name == "nodes":
                node_fields, containers = self._event_fields(sub)
                wants_containers |= containers
                nodes = _list_builder(self.schema, node_fields)
            elif name == "pageInfo":
                page_info = self._leaves("PageInfo", sub, _PAGE_INFO_LEAVES)
            elif name == "totalCount":
                wants_total = True
            elif name != "__typename":
                raise Unplanned(f"EventConnection.{name}")
        return EventsPlan(
            field_def,
            details,
            edges,
            nodes,
            page_info,
            wants_total,
            wants_containers,
            tuple(keys),
            tuple(kinds),
        )

    def _event_fields(self, details: FieldDetailsList) -> tuple[Exprs, bool]:
        """The Event's response keys, each with an expression over the row `r`."""
        fields: list[tuple[str, str]] = []
        wants_containers = False
        for key, sub in self._sub("Event", details).items():
            name = sub[0].node.name.value
            if name == "__typename":
                fields.append((key, repr("Event")))
            elif name in _EVENT_EXPRESSIONS:
                fields.append((key, _EVENT_EXPRESSIONS[name]))
            elif name == "container":
                container = []
                for sub_key, leaf in self._sub("Container", sub).items():
                    leaf_name = leaf[0].node.name.value
                    if leaf_name == "__typename":
                        container.append((sub_key, repr("Container")))
                    elif leaf_name in _CONTAINER_EXPRESSIONS:
                        container.append((sub_key, _CONTAINER_EXPRESSIONS[leaf_name]))
                        # The event's own column is the container's id: the events table's
                        # foreign key guarantees the row, so only its other fields need it.
                        wants_containers |= leaf_name != "id"
                    else:
                        raise Unplanned(f"Container.{leaf_name}")
                fields.append((key, _dict_expression(tuple(container))))
            else:
                raise Unplanned(f"Event.{name}")
        return tuple(fields), wants_containers

    def _leaves(self, type_name: str, details: FieldDetailsList, leaves: dict[str, Read]) -> Fields:
        fields = []
        for key, sub in self._sub(type_name, details).items():
            name = sub[0].node.name.value
            if name == "__typename":
                fields.append((key, _constant(type_name)))
            elif name in leaves:
                fields.append((key, leaves[name]))
            else:
                raise Unplanned(f"{type_name}.{name}")
        return tuple(fields)


def _constant(value: str) -> Read:
    return lambda _source: value


# The lists of a page are built by a function generated per selection (as graphql-jit does
# for graphql-js): one dict display per row, each value an expression over the driver's row `r`
# (its columns by position, see _AT) and its container `c`, with no call per field. Built from
# response keys (GraphQL names, checked by the parser) and the fixed expressions below only.
_AT = {name: position for position, name in enumerate(EVENT_COLUMNS)}
_EVENT_EXPRESSIONS = {
    "id": f"str(r[{_AT['id']}])",
    "containerId": f"r[{_AT['container_id']}]",
    "eventType": f"TYPES[r[{_AT['event_type']}]]",
    "status": f"STATUSES[r[{_AT['status']}]]",
    "timestamp": "timestamps[i]",
    "receivedAt": "received[i]",
    "actor": f"r[{_AT['actor']}]",
    "details": "JSON(details[i])",
    "keyId": f"r[{_AT['key_id']}]",
    "cursor": "cursors[i]",
}
_CONTAINER_EXPRESSIONS = {
    "id": f"r[{_AT['container_id']}]",
    "createdAt": f"ISO(c[r[{_AT['container_id']}]].created_at)",
    "lastEventAt": f"ISO(c[r[{_AT['container_id']}]].last_event_at)",
}
# A page's cursors, times and details are decoded a column at a time, as the rows' source
# needs (SOURCES), before the rows are built: DATETIMES serializes a column in two C calls, a
# third of the time of one call per value.
_COLUMNS = {
    "cursors": f"[CURSOR(r[{_AT['id']}]) for r in rows]",
    "timestamps": f"TIMES([r[{_AT['timestamp']}] for r in rows])",
    "received": f"TIMES([r[{_AT['received_at']}] for r in rows])",
    "details": f"DETAILS([r[{_AT['details']}] for r in rows])",
}


def _dict_expression(fields: Exprs) -> str:
    return "{" + ", ".join(f"{key!r}: {expression}" for key, expression in fields) + "}"


def _list_builder(schema: GraphQLSchema, fields: Exprs) -> ListBuilder:
    row = _dict_expression(fields)
    columns = [name for name in _COLUMNS if f"{name}[i]" in row]
    lines = [f"    {name} = {_COLUMNS[name]}" for name in columns]
    code = "\n".join(
        [
            "def build(rows, c, source):",
            "    TIMES, DETAILS = SOURCES[source]",
            *lines,
            f"    return [{row} for i, r in enumerate(rows)]",
        ]
    )
    namespace = dict(_namespace(schema))
    exec(compile(code, "<plan>", "exec"), namespace)
    return cast(ListBuilder, namespace["build"])


_NAMESPACES: dict[int, tuple[GraphQLSchema, dict[str, Any]]] = {}


def _namespace(schema: GraphQLSchema) -> dict[str, Any]:
    """What the generated functions call: the schema's own serializations."""
    cached = _NAMESPACES.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    event = schema.get_type("Event")
    assert isinstance(event, GraphQLObjectType)
    event_type = get_nullable_type(event.fields["eventType"].type)
    status = get_nullable_type(event.fields["status"].type)
    serialize = get_nullable_type(event.fields["timestamp"].type).serialize
    datetimes = _datetimes(serialize)
    native = _native_datetimes if serialize is serialize_datetime else datetimes
    as_text = serialize is serialize_datetime
    namespace = {
        "__builtins__": {"str": str, "enumerate": enumerate},
        "TYPES": {value: event_type.serialize(member) for value, member in EVENT_TYPES.items()},
        "STATUSES": {value: status.serialize(member) for value, member in EVENT_STATUSES.items()},
        "SOURCES": {
            ("sqlite", False): (_sqlite_times(datetimes, as_text=as_text), _sqlite_details),
            ("sqlite", True): (_sqlite_times(native, as_text=as_text), _sqlite_details),
            ("decoded", False): (datetimes, _decoded_details),
            ("decoded", True): (native, _decoded_details),
        },
        "JSON": get_nullable_type(event.fields["details"].type).serialize,
        "CURSOR": encode_event_cursor,
        "ISO": _iso,
    }
    _NAMESPACES[id(schema)] = (schema, namespace)
    return namespace


Column = Callable[[list[Any]], list[Any]]


def _datetimes(serialize: Callable[[Any], Any]) -> Column:
    """A column of datetimes serialized as `serialize` does each (serialize_datetime: for UTC,
    exactly what orjson writes). A time without a zone is UTC: asyncpg reads PostgreSQL's
    'infinity' (datetime.max in UTC) without one, and storage gives it its UTC back."""

    def column(values: list[Any]) -> list[Any]:
        if serialize is serialize_datetime:
            for value in values:
                if type(value) is not datetime or value.tzinfo is not UTC:
                    break
            else:
                return cast(list[Any], orjson.loads(orjson.dumps(values)))
        return [serialize(_utc(value)) for value in values]

    return column


def _native_datetimes(values: list[Any]) -> list[Any]:
    """A column of UTC datetimes as they are, for orjson's defaults to write (see `run`);
    anything else serialized here."""
    for value in values:
        if type(value) is not datetime or value.tzinfo is not UTC:
            return [
                value
                if type(value) is datetime and value.tzinfo is UTC
                else serialize_datetime(value)
                for value in map(_utc, values)
            ]
    return values


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _sqlite_times(datetimes: Column, *, as_text: bool) -> Column:
    """SQLite's naive UTC text, as storage's UTCDateTime reads it, then `datetimes`; or, with
    `as_text` (the DateTime scalar is serialize_datetime), straight to what it writes."""
    parse = datetime.fromisoformat

    def column(values: list[Any]) -> list[Any]:
        if as_text:
            texts = _sqlite_times_as_text(values)
            if texts is not None:
                return texts
        return datetimes([parse(value + "+00:00") for value in values])

    return column


_SQLITE_TIME_CHARS = len("2023-11-18 12:00:00.000000")  # storage.models._sqlite_utc_text


def _sqlite_times_as_text(values: list[Any]) -> list[str] | None:
    """serialize_datetime of each UTC time that storage wrote as SQLite text, by rewriting the
    text: `2023-11-18 12:00:00.250000` is `2023-11-18T12:00:00.250000+00:00`, and a time
    without microseconds loses its `.000000`, as isoformat writes it. One pass over the
    column's joined text: a third of parsing each into a datetime for orjson to write (about
    15 us a 100-event column). None for anything else (a NULL, text of another shape)."""
    for value in values:
        if type(value) is not str or len(value) != _SQLITE_TIME_CHARS or value[10] != " ":
            return None
    joined = ("+00:00\n".join(values) + "+00:00").replace(" ", "T")
    if ".000000+" in joined:  # only ever the microseconds, before the offset
        joined = joined.replace(".000000+", "+")
    texts = joined.split("\n")
    return texts if len(texts) == len(values) else None


def _sqlite_details(values: list[Any]) -> list[Any]:
    """SQLite's JSON text as storage reads it: no details (SQL NULL or JSON null) is {}."""
    parse = orjson.loads
    return [{} if value is None else (parse(value) or {}) for value in values]


def _decoded_details(values: list[Any]) -> list[Any]:
    return [{} if value is None else value for value in values]


def _iso(value: Any) -> Any:
    return None if value is None else serialize_datetime(value)


_ORG_LEAVES: dict[str, Read] = {
    "id": lambda org: org.id,
    "name": lambda org: org.name,
    "createdAt": lambda org: _iso(org.created_at),
}
_CONTAINER_LEAVES: dict[str, Read] = {
    "id": lambda container: container.id,
    "createdAt": lambda container: _iso(container.created_at),
    "lastEventAt": lambda container: _iso(container.last_event_at),
}
_PAGE_INFO_LEAVES: dict[str, Read] = {
    "hasNextPage": lambda page: page[1] is not None,
    "hasPreviousPage": lambda page: page[2] is not None,
    "startCursor": lambda page: _page_info(_ends(page[0]), page[1], page[2]).start_cursor,
    "endCursor": lambda page: _page_info(_ends(page[0]), page[1], page[2]).end_cursor,
}


_BUCKET_LEAVES: dict[str, Read] = {
    "key": lambda bucket: bucket.key,
    "count": lambda bucket: bucket.count,
}
_CURSORS_PAGE_INFO: dict[str, Read] = {
    "hasNextPage": lambda page: page[1] is not None,
    "hasPreviousPage": lambda page: page[2] is not None,
    "startCursor": lambda page: _page_info(page[0], page[1], page[2]).start_cursor,
    "endCursor": lambda page: _page_info(page[0], page[1], page[2]).end_cursor,
}


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _second_built(fields: Fields) -> Read:
    return lambda pair: _build(fields, pair[1])


def _ends(rows: Sequence[Any]) -> list[str]:
    return [encode_event_cursor(row[_AT["id"]]) for row in (rows[0], rows[-1])] if rows else []


# Running a plan.


async def run(
    plan: Plan, context: Any, variables: VariableValues, *, native_times: bool = False
) -> dict[str, Any]:
    """The response's data; raises Declined where graphql-core must answer instead.

    With `native_times`, events' UTC times may stay datetimes, for a caller that encodes the
    data with orjson's default options: orjson writes a UTC datetime exactly as DateTime
    serializes it (serialize_datetime), in C, at a fraction of the cost of a string each."""
    data: dict[str, Any] = {}
    for key, step in plan.root:
        if isinstance(step, str):
            data[key] = step
        else:
            data[key] = await _org(step, context, variables, native_times)
    return data


async def _org(
    plan: OrgPlan, context: Any, variables: VariableValues, native_times: bool
) -> dict[str, Any]:
    org_id = _arguments(plan.field_def, plan.details, variables)["id"]
    if org_id != context.org_id or not allows(context.scopes, Scope.READ):
        raise Declined
    org = await context.db.org(org_id)
    if org is None:
        raise Declined
    return await _object(plan.steps, org, org_id, None, context, variables, native_times)


async def _object(
    steps: tuple[Step, ...],
    record: Any,
    org_id: str,
    container_id: str | None,
    context: Any,
    variables: VariableValues,
    native_times: bool,
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for step in steps:
        if step.read is not None:
            values[step.key] = step.read(record)
        elif step.events is not None:
            values[step.key] = await _events(
                step.events, org_id, container_id, context, variables, native_times
            )
        elif step.counts is not None:
            assert step.field_def and step.details
            values[step.key] = await _counts(step, org_id, context, variables)
        elif step.containers is not None:
            assert step.field_def and step.details
            values[step.key] = await _container_page(step, org_id, context, variables)
        else:
            assert step.container is not None and step.field_def and step.details
            wanted = _arguments(step.field_def, step.details, variables)["id"]
            if not domain.is_valid_id(wanted):
                raise Declined
            async with context.db.reader() as reader:
                row = await get_container(reader, org_id=org_id, container_id=wanted)
            if row is None:
                raise Declined
            values[step.key] = await _object(
                step.container.steps, row, org_id, row.id, context, variables, native_times
            )
    return values


async def _counts(
    step: Step, org_id: str, context: Any, variables: VariableValues
) -> list[dict[str, Any]]:
    """Organization.eventCounts, as its resolver counts (its errors: Declined)."""
    assert step.counts is not None and step.field_def and step.details
    arguments = _arguments(step.field_def, step.details, variables)
    try:
        window = _window(arguments["since"], arguments["until"])
        query = EventQuery(org_id, arguments.get("filter"), arguments.get("containerId"), window)
        buckets = await resolve_event_counts(_InfoOf(context), query=query, by=arguments["by"])  # type: ignore[arg-type]
    except BadUserInput:
        raise Declined from None
    fields = step.counts
    return [_build(fields, bucket) for bucket in buckets]


async def _container_page(
    step: Step, org_id: str, context: Any, variables: VariableValues
) -> dict[str, Any]:
    """Organization.containers, as its resolver pages them (its errors: Declined)."""
    plan = step.containers
    assert plan is not None and step.field_def and step.details
    arguments = _arguments(step.field_def, step.details, variables)
    first, after = arguments.get("first"), arguments.get("after")
    limit = 100 if first is None else first
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise Declined
    try:
        after_id = None if after is None else decode_container_cursor(after)
    except InvalidCursor:
        raise Declined from None
    async with context.db.reader() as reader:
        found = await list_containers(reader, org_id=org_id, limit=limit, after_id=after_id)
    values: dict[str, Any] = {}
    for key, kind in zip(plan.keys, plan.kinds, strict=True):
        if kind == "edges":
            assert plan.edges is not None
            edges = plan.edges
            values[key] = [
                _build(edges, pair) for pair in zip(found.cursors, found.rows, strict=True)
            ]
        elif kind == "nodes":
            assert plan.nodes is not None
            nodes = plan.nodes
            values[key] = [_build(nodes, row) for row in found.rows]
        elif kind == "pageInfo":
            assert plan.page_info is not None
            values[key] = _build(plan.page_info, (found.cursors, found.next_cursor, after))
        else:
            values[key] = "ContainerConnection"
    return values


async def _events(
    plan: EventsPlan,
    org_id: str,
    scoped_to: str | None,
    context: Any,
    variables: VariableValues,
    native_times: bool,
) -> dict[str, Any]:
    arguments = _arguments(plan.field_def, plan.details, variables)
    container_id = scoped_to if scoped_to is not None else arguments.get("containerId")
    try:
        window = _window(arguments.get("since"), arguments.get("until"))
        page = _page(
            arguments.get("first"),
            arguments.get("after"),
            arguments.get("order") or domain.Order.DESC,
        )
    except BadUserInput:
        raise Declined from None
    if container_id is not None and not domain.is_valid_id(container_id):
        raise Declined
    event_filter = arguments.get("filter")
    rows: Sequence[Any] = ()
    next_cursor, source = None, "decoded"
    containers: dict[str, ContainerRecord] = {}
    if plan.wants_page:
        async with context.db.reader() as reader:
            found = await list_event_rows(
                reader,
                org_id=org_id,
                event_filter=event_filter,
                container_id=container_id,
                window=window,
                page=page,
            )
            rows, next_cursor = found.rows, found.next_cursor
            source = "sqlite" if found.dialect == "sqlite" else "decoded"
            if plan.wants_containers and rows:
                container_ids = [row[_AT["container_id"]] for row in rows]
                containers = await get_containers(
                    reader, org_id=org_id, container_ids=container_ids
                )
    total = None
    if plan.wants_total:
        query = EventQuery(org_id, event_filter, container_id, window)
        total = await resolve_total_count(_InfoOf(context), query)  # type: ignore[arg-type]
    after = arguments.get("after")
    values: dict[str, Any] = {}
    for key, kind in zip(plan.keys, plan.kinds, strict=True):
        if kind == "edges":
            assert plan.edges is not None
            values[key] = _built(plan.edges, rows, containers, (source, native_times))
        elif kind == "nodes":
            assert plan.nodes is not None
            values[key] = _built(plan.nodes, rows, containers, (source, native_times))
        elif kind == "pageInfo":
            assert plan.page_info is not None
            values[key] = _build(plan.page_info, (rows, next_cursor, after))
        elif kind == "totalCount":
            values[key] = total
        else:
            values[key] = "EventConnection"
    return values


async def event_data(plan: EventPlan, context: Any, row: EventRecord) -> dict[str, Any]:
    """One event's data for a subscription; Declined where graphql-core must answer."""
    containers: dict[str, ContainerRecord] = {}
    if plan.wants_container:
        async with context.db.reader() as reader:
            found = await get_container(
                reader, org_id=row["org_id"], container_id=row["container_id"]
            )
        if found is None:
            raise Declined
        containers[found.id] = found
    event = _built(plan.build, [_values(row)], containers, ("decoded", False))[0]
    return {plan.key: event}


_values = itemgetter(*EVENT_COLUMNS)  # a record's values as a row of the driver's


def _built(
    build: ListBuilder,
    rows: Sequence[Any],
    containers: dict[str, ContainerRecord],
    source: tuple[str, bool],
) -> list[dict[str, Any]]:
    try:
        return build(rows, containers, source)
    except KeyError:  # a container missing: graphql-core reports it
        raise Declined from None


@dataclass(frozen=True)
class _InfoOf:
    context: Any  # all resolve_total_count reads of its Info


def _arguments(
    field_def: GraphQLField, details: FieldDetailsList, variables: VariableValues
) -> dict[str, Any]:
    return get_argument_values(field_def, details[0].node, variables)


# The cache of plans.


# What each operation type compiles to; other operations (mutations) graphql-core executes.
_COMPILES: dict[OperationType, Callable[[Compiler], "Plan | EventPlan"]] = {
    OperationType.QUERY: Compiler.plan,
    OperationType.SUBSCRIPTION: Compiler.event_plan,
}


class Plans:
    """Plans by operation (the parser cache hands out the same document for the same text)
    and the outcome of its @include/@skip variables; None for one left to graphql-core."""

    def __init__(self, kept: int = PLANS_KEPT) -> None:
        self.kept = kept
        self._plans: OrderedDict[tuple[Any, ...], tuple[OperationDefinitionNode, Any]]
        self._plans = OrderedDict()
        # Events' data by plan and event id: each is built for its first subscriber only.
        self._events: OrderedDict[tuple[int, int], tuple[EventPlan, EventRecord, dict[str, Any]]]
        self._events = OrderedDict()
        self._names: dict[int, tuple[OperationDefinitionNode, tuple[str, ...]]] = {}
        # Query texts a plan has answered, by (text, operation name): see `answer`.
        self._texts: OrderedDict[
            tuple[str, str | None], tuple[OperationDefinitionNode, dict[str, FragmentDetails]]
        ] = OrderedDict()
        self._variables: OrderedDict[tuple[Any, ...], tuple[OperationDefinitionNode, Any]]
        self._variables = OrderedDict()

    def remember(
        self,
        query: str,
        operation_name: str | None,
        answered: "tuple[OperationDefinitionNode, dict[str, FragmentDetails]]",
    ) -> None:
        """A query text that graphql-core's pipeline parsed and validated without an error,
        and whose operation a plan then answered: `answer` may take it from here on."""
        key = (query, operation_name)
        self._texts[key] = answered
        self._texts.move_to_end(key)
        while len(self._texts) > self.kept:
            self._texts.popitem(last=False)

    async def answer(
        self,
        schema: GraphQLSchema,
        query: str,
        operation_name: str | None,
        raw_variables: dict[str, Any] | None,
        context: Any,
    ) -> dict[str, Any] | None:
        """The data of a remembered query, or None for the whole ordinary path to answer. Its
        UTC times may be datetimes: encode it with orjson's default options (see `run`).

        Parsing and validation depend only on the text, the operation name and the schema's
        fixed rules, so a text that passed them once passes them again; what is left per
        request is what graphql-core does next (coercing the variables) and the plan. Any
        error on the way (bad variables, a plan that declines) is left to the ordinary path,
        which reports it as it always does."""
        found = self._texts.get((query, operation_name))
        if found is None:
            return None
        operation, fragments = found
        variables = self.coerced(schema, operation, raw_variables or {})
        if variables is None:
            return None
        plan = self.get(schema, fragments, operation, variables)
        if not isinstance(plan, Plan):
            return None
        try:
            return await run(plan, context, variables, native_times=True)
        except Exception:  # Declined, or a fault graphql-core reports with its path
            return None

    def coerced(
        self, schema: GraphQLSchema, operation: OperationDefinitionNode, raw: dict[str, Any]
    ) -> VariableValues | None:
        """graphql-core's coercion of the operation's variables (get_variable_values), None
        where it reports errors. Coercion depends only on the definitions and the raw values,
        so for raw values that are short JSON scalars it is kept: a page polled with the same
        variables is coerced once (ContainerEvents' eight definitions cost ~40 us a request).
        The kept values are graphql-core's own objects, which nothing downstream changes."""
        key: tuple[Any, ...] | None = (id(operation), *raw.items(), *map(type, raw.values()))
        for value in raw.values():
            if type(value) not in _KEPT_SCALARS or (
                type(value) is str and len(value) > _KEPT_STRING_CHARS
            ):
                key = None
                break
        if key is not None:
            cached = self._variables.get(key)
            if cached is not None and cached[0] is operation:
                self._variables.move_to_end(key)
                return cast(VariableValues, cached[1])
        variables = get_variable_values(
            schema, operation.variable_definitions or (), raw, max_errors=50
        )
        if isinstance(variables, list):
            return None
        if key is not None:
            self._variables[key] = (operation, variables)
            while len(self._variables) > VARIABLES_KEPT:
                self._variables.popitem(last=False)
        return variables

    def get(
        self,
        schema: GraphQLSchema,
        fragments: dict[str, FragmentDetails],
        operation: OperationDefinitionNode,
        variables: VariableValues,
    ) -> "Plan | EventPlan | None":
        """A query's Plan, a subscription's EventPlan, or None (graphql-core executes it)."""
        compile_ = _COMPILES.get(operation.operation)
        if compile_ is None:
            return None
        names = self._directive_variables(operation, fragments)
        key = (id(operation), tuple(variables.coerced.get(name) for name in names))
        cached = self._plans.get(key)
        if cached is not None and cached[0] is operation:
            self._plans.move_to_end(key)
            return cached[1]
        try:
            plan = compile_(Compiler(schema, fragments, operation, variables))
        except Unplanned:
            plan = None
        self._plans[key] = (operation, plan)
        while len(self._plans) > self.kept:
            self._plans.popitem(last=False)
        return plan

    async def event_data(self, plan: EventPlan, context: Any, row: EventRecord) -> dict[str, Any]:
        """The event's data under the plan, built once for all the subscribers who share
        the plan (the same operation and directive outcome) and kept for the next ones."""
        key = (id(plan), row["id"])
        cached = self._events.get(key)
        # The same row (a schema serving another database may see the same id again).
        if cached is not None and cached[0] is plan and (cached[1] is row or cached[1] == row):
            return cached[2]
        data = await event_data(plan, context, row)
        self._events[key] = (plan, row, data)
        while len(self._events) > EVENTS_KEPT:
            self._events.popitem(last=False)
        return data

    def _directive_variables(
        self, operation: OperationDefinitionNode, fragments: dict[str, FragmentDetails]
    ) -> tuple[str, ...]:
        """The variables that directives of the operation or its fragments read."""
        cached = self._names.get(id(operation))
        if cached is not None and cached[0] is operation:
            return cached[1]
        names: list[str] = []

        class Directives(Visitor):
            def enter_directive(self, node: DirectiveNode, *_args: Any) -> None:
                for argument in node.arguments or ():
                    if isinstance(argument.value, VariableNode):
                        names.append(argument.value.name.value)

        for node in (operation, *(fragment.definition for fragment in fragments.values())):
            visit(node, Directives())
        found = tuple(dict.fromkeys(names))
        if len(self._names) > self.kept:
            self._names.clear()
        self._names[id(operation)] = (operation, found)
        return found
