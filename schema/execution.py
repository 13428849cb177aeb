"""Field execution with a fast path for plain leaf fields, the bulk of every page of events,
and large variables coerced beside the event loop."""

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from contextlib import aclosing
from contextvars import ContextVar
from datetime import datetime
from typing import Any, NamedTuple, Protocol, cast
from weakref import WeakKeyDictionary

from graphql import (
    ExecutionResult,
    Executor,
    GraphQLField,
    GraphQLLeafType,
    GraphQLList,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    GraphQLSchema,
    Undefined,
    get_nullable_type,
    is_leaf_type,
    is_non_null_type,
    is_object_type,
)
from graphql.execution.collect_fields import FieldDetailsList, GroupedFieldSet
from graphql.execution.values import get_variable_values
from graphql.language import OperationType
from graphql.pyutils import AwaitableOrValue, Path
from strawberry.schema.schema import Schema, StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import (
    CustomGraphQLEnumType,
    GraphQLCoreConverter,
    get_arguments,
)
from strawberry.types.field import StrawberryField

from schema import compiled


class FieldReader(NamedTuple):
    """How to read a scalar or enum field declared without a resolver or arguments."""

    read: Callable[[Any, str], Any]  # Strawberry's default resolver: getattr unless configured
    attribute: str
    serialize: Callable[[Any], Any]
    nullable: bool


class SelectionPlan(NamedTuple):
    """How one grouped selection is executed: its plain leaves here, the rest by graphql-core."""

    leaves: tuple[tuple[str, FieldReader], ...]  # by response name
    others: GroupedFieldSet
    response_names: tuple[str, ...]  # the selection's order, which the response keeps


# The compiled plans of each schema built with them (schema.compiled); absent: graphql-core runs
# every operation.
COMPILED_PLANS: WeakKeyDictionary[GraphQLSchema, compiled.Plans] = WeakKeyDictionary()


class LiveSink(Protocol):
    """Where a subscription's events go when its compiled plan builds them (LIVE_SINK)."""

    async def send_data(self, data: dict[str, Any]) -> bool:
        """Send one event's data as the operation's `next` message, exactly as the result
        `{"data": data}` would be sent; False if the client can no longer be sent to."""
        ...


# Set by the transport for the task that runs one subscription operation: events a compiled
# plan builds are handed to it straight from the source stream, skipping graphql-core's
# per-event executor and Strawberry's per-result hooks, which add nothing to a result
# without errors. Unset, every event goes the ordinary way.
LIVE_SINK: ContextVar[LiveSink | None] = ContextVar("live_sink", default=None)

# A variable holding a list longer than this is coerced in a worker thread. graphql-core's
# coercion is pure Python: for a 10,000-event logContainerEvents it held the event loop for
# ~130 ms in one go, where a thread gives the loop its turn every few milliseconds.
THREADED_LIST_ITEMS = 500

# Exact types that are never awaitable (no __await__, no attributes of their own per value),
# so the check is skipped for them: datetimes are two of an event's eight fields.
NEVER_AWAITABLE = frozenset({str, int, float, bool, dict, list, datetime})


def convert_large_lists_beside_the_loop(schema: Schema) -> None:
    """Mutations given a list longer than THREADED_LIST_ITEMS have their arguments converted
    to Strawberry inputs in a worker thread, then their resolver called as Strawberry calls it.

    Strawberry converts a list on the event loop, item by item: ~10 µs each in its own
    dispatch, so 10,000 events held the loop for 155 ms (tests/test_graphql_large_variables.py
    compares the two paths). Only fields without field extensions or exception handlers are
    taken, whose resolver Strawberry calls directly with the converted arguments.
    """
    mutation = schema._schema.mutation_type
    converter = schema.schema_converter
    for graphql_field in mutation.fields.values() if mutation else ():
        field = (graphql_field.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
        if not isinstance(field, StrawberryField) or field.extensions:
            continue
        if converter._get_field_exception_handlers(field):
            continue
        graphql_field.resolve = _converting_large_lists(schema, field, graphql_field.resolve)


def _converting_large_lists(schema: Schema, field: StrawberryField, ordinary: Any) -> Any:
    converter = schema.schema_converter

    def resolve(source: Any, info: GraphQLResolveInfo, **kwargs: Any) -> Any:
        if not any(
            isinstance(value, list) and len(value) > THREADED_LIST_ITEMS
            for value in kwargs.values()
        ):
            return ordinary(source, info, **kwargs)
        return _resolve_converted(source, info, kwargs)

    async def _resolve_converted(source: Any, info: GraphQLResolveInfo, kwargs: Any) -> Any:
        strawberry_info = schema.config.info_class(_raw_info=info, _field=field)
        args, converted = await asyncio.to_thread(
            get_arguments,
            field=field,
            source=source,
            info=strawberry_info,
            kwargs=kwargs,
            config=schema.config,
            scalar_registry=converter.scalar_registry,
        )
        result = field.get_result(source, info=strawberry_info, args=args, kwargs=converted)
        return await result if asyncio.iscoroutine(result) or asyncio.isfuture(result) else result

    return resolve


class GatewayExecutor(StrawberryGraphQLCoreExecutionContext):
    """graphql-core's executor, reading plain leaf fields without its per-field machinery.

    A page of 100 events is ~800 leaf fields, and graphql-core spends several µs on each:
    a Path, a GraphQLResolveInfo, the resolver chain, complete_value's type dispatch and
    awaitable checks, and as much again per list item. None of that matters for a field
    Strawberry resolves by reading an attribute, so such fields are read and serialized
    directly, and a list of objects selecting only such fields is completed in one loop.
    Anything unusual (a null for a non-null field, an awaitable, an exception, a value the
    scalar refuses) sends the whole object or list back through graphql-core, which reads it
    again and reports exactly as it always does. Fields with resolvers or arguments,
    __typename, lists of interfaces or unions, and every field when there is field middleware
    always take graphql-core's path; @skip and @include are applied before any of this, when
    the fields are collected.
    """

    _deferred_variables: dict[str, Any] | None = None  # raw values, coerced when it runs

    @classmethod
    def build(
        cls,
        schema: Any,
        document: Any,
        root_value: Any = None,
        context_value: Any = None,
        raw_variable_values: dict[str, Any] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """graphql-core's build; with a large list variable, the document is checked against
        an empty list in its place and the real values are coerced when the operation runs,
        in a worker thread (execute_operation). A list given where no list may go is then
        reported as `[]`: an error either way."""
        raw = raw_variable_values or {}
        large = {
            name
            for name, value in raw.items()
            if isinstance(value, list) and len(value) > THREADED_LIST_ITEMS
        }
        if not large:
            return super().build(schema, document, root_value, context_value, raw, *args, **kwargs)
        stand_in = {name: [] if name in large else value for name, value in raw.items()}
        built = super().build(
            schema, document, root_value, context_value, stand_in, *args, **kwargs
        )
        if isinstance(built, list):
            return built
        if built.operation.operation is OperationType.SUBSCRIPTION:  # not run by execute_operation
            return super().build(schema, document, root_value, context_value, raw, *args, **kwargs)
        cast(GatewayExecutor, built)._deferred_variables = raw
        return built

    def execute_operation(self, serially: bool | None = None) -> Any:
        if self._deferred_variables is not None:
            return self._execute_when_coerced(self._deferred_variables, serially)
        plans = COMPILED_PLANS.get(self.schema)
        if plans is not None and not (
            self.middleware_manager and self.middleware_manager.middlewares
        ):
            plan = plans.get(self.schema, self.fragments, self.operation, self.variable_values)
            if isinstance(plan, compiled.Plan):
                return self._execute_compiled(plan, serially)
            row = getattr(self.root_value, "row", None)  # a subscription's event
            if isinstance(plan, compiled.EventPlan) and row is not None:
                return self._execute_event(plans, plan, row, serially)
        return super().execute_operation(serially)

    async def _execute_event(
        self, plans: compiled.Plans, plan: compiled.EventPlan, row: Any, serially: bool | None
    ) -> Any:
        try:
            data = await plans.event_data(plan, self.context_value, row)
        except Exception:  # Declined, or a fault graphql-core reports with its path
            result = super().execute_operation(serially)
            return await result if self.is_awaitable(result) else result
        return self.build_response(data)

    async def _execute_compiled(self, plan: compiled.Plan, serially: bool | None) -> Any:
        """The plan's answer; graphql-core's where the plan declines (an error to report)."""
        try:
            data = await compiled.run(plan, self.context_value, self.variable_values)
        except Exception:  # Declined, or a fault graphql-core reports with its path
            result = super().execute_operation(serially)
            return await result if self.is_awaitable(result) else result
        if hasattr(self.context_value, "compiled_operation"):
            self.context_value.compiled_operation = (self.operation, self.fragments)
        return self.build_response(data)

    async def _execute_when_coerced(self, raw: dict[str, Any], serially: bool | None) -> Any:
        self._deferred_variables = None
        coerced = await asyncio.to_thread(
            get_variable_values,
            self.schema,
            self.operation.variable_definitions or (),
            raw,
            max_errors=50,  # graphql-core's default, which Strawberry keeps
            hide_suggestions=self.hide_suggestions,
        )
        if isinstance(coerced, list):
            return ExecutionResult(None, errors=coerced)
        self.variable_values = coerced
        result = super().execute_operation(serially)
        return await result if self.is_awaitable(result) else result

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Keyed by the id of a grouped field set, which graphql-core builds once per selection
        # and reuses for every item of a list; the set is kept so its id stays unique.
        self._plans: dict[int, tuple[GroupedFieldSet, SelectionPlan]] = {}

    _per_event = False  # a subscription event's executor (build_per_event_executor)

    def cancellable_iterable(self, iterable: AsyncIterable[Any]) -> AsyncIterable[Any]:
        # graphql-core calls this with a subscription's source stream (and with @stream's
        # lists, which only per-event and query executors complete).
        events = super().cancellable_iterable(iterable)
        sink = LIVE_SINK.get()
        if (
            sink is None
            or self._per_event
            or self.operation.operation is not OperationType.SUBSCRIPTION
        ):
            return events
        plans = COMPILED_PLANS.get(self.schema)
        if plans is None or (self.middleware_manager and self.middleware_manager.middlewares):
            return events
        plan = plans.get(self.schema, self.fragments, self.operation, self.variable_values)
        if not isinstance(plan, compiled.EventPlan):
            return events
        return _sent_by_plan(events, plans, plan, self.context_value, sink)

    def build_per_event_executor(self, payload: Any) -> Executor:
        # A subscription collects each event's fields afresh, so caches keyed by the identity
        # of collected fields never hit across events. Shared with the subscription's executor
        # (graphql-core copies it shallowly), ours and graphql-core's own memo of collected
        # subfields would keep every event's field sets for as long as the subscription runs.
        executor = cast(GatewayExecutor, super().build_per_event_executor(payload))
        executor._plans = {}
        executor._relevant_sub_fields = {}
        executor._per_event = True
        return executor

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: GroupedFieldSet,
        position_context: Any,
    ) -> AwaitableOrValue[dict[str, Any]]:
        plan = self._plan(parent_type, grouped_field_set)
        values = self._read_leaves(plan, source_value) if plan.leaves else None
        if values is None:
            return super().execute_fields(
                parent_type, source_value, path, grouped_field_set, position_context
            )
        if not plan.others:
            return values
        others = super().execute_fields(
            parent_type, source_value, path, plan.others, position_context
        )
        if isinstance(others, dict):
            return _in_order(plan, values, others)

        async def merge_awaited() -> dict[str, Any]:
            return _in_order(plan, values, await others)

        return merge_awaited()

    def complete_list_value(
        self,
        return_type: GraphQLList[GraphQLOutputType],
        field_details_list: FieldDetailsList,
        info: GraphQLResolveInfo,
        path: Path,
        result: Any,
        position_context: Any,
    ) -> AwaitableOrValue[list[Any]]:
        nullable = not is_non_null_type(return_type.of_type)
        object_type = get_nullable_type(return_type.of_type)
        if isinstance(result, list) and is_object_type(object_type) and not object_type.is_type_of:
            collected = self.collect_subfields(object_type, field_details_list)
            if not collected.new_defer_usages:
                plan = self._plan(object_type, collected.grouped_field_set)
                if plan.leaves and not plan.others:
                    items = self._read_items(plan, result, nullable)
                    if items is not None:
                        return items
        return super().complete_list_value(
            return_type, field_details_list, info, path, result, position_context
        )

    def _read_items(
        self, plan: SelectionPlan, items: list[Any], nullable: bool
    ) -> list[Any] | None:
        """Each item's leaves, or None when one needs graphql-core's full path."""
        completed: list[Any] = []
        for item in items:
            if item is None and nullable:
                completed.append(None)
                continue
            if item is None or isinstance(item, Exception) or self.is_awaitable(item):
                return None
            values = self._read_leaves(plan, item)
            if values is None:
                return None
            completed.append(values)
        return completed

    def _read_leaves(self, plan: SelectionPlan, source: Any) -> dict[str, Any] | None:
        """The plan's leaves, serialized, or None when one needs graphql-core's full path."""
        values: dict[str, Any] = {}
        try:
            for response_name, (read, attribute, serialize, nullable) in plan.leaves:
                value = read(source, attribute)
                if value is None:
                    if not nullable:
                        return None
                    values[response_name] = None
                elif type(value) not in NEVER_AWAITABLE and (
                    isinstance(value, Exception) or self.is_awaitable(value)
                ):
                    return None
                else:
                    serialized = values[response_name] = serialize(value)
                    if serialized is None or serialized is Undefined:
                        return None
        except Exception:
            return None
        return values

    def _plan(
        self, parent_type: GraphQLObjectType, grouped_field_set: GroupedFieldSet
    ) -> SelectionPlan:
        cached = self._plans.get(id(grouped_field_set))
        if cached is not None:
            return cached[1]
        # Field middleware must see every field: with any, no field is read directly.
        direct = not (self.middleware_manager and self.middleware_manager.middlewares)
        leaves: list[tuple[str, FieldReader]] = []
        others: GroupedFieldSet = {}
        for response_name, field_details_list in grouped_field_set.items():
            node = field_details_list[0].node
            reader = None
            if direct and not node.arguments:
                reader = _field_reader(parent_type, node.name.value)
            if reader is None:
                others[response_name] = field_details_list
            else:
                leaves.append((response_name, reader))
        plan = SelectionPlan(tuple(leaves), others, tuple(grouped_field_set))
        self._plans[id(grouped_field_set)] = (grouped_field_set, plan)
        return plan


# Each object type's readers by field name (None: the field takes graphql-core's path), worked
# out once per schema rather than per request; weak, so a dropped schema is not kept alive.
_READERS: WeakKeyDictionary[GraphQLObjectType, dict[str, FieldReader | None]] = WeakKeyDictionary()


def _field_reader(parent_type: GraphQLObjectType, field_name: str) -> FieldReader | None:
    """The field's reader, or None when it must take graphql-core's path."""
    readers = _READERS.setdefault(parent_type, {})
    if field_name not in readers:
        readers[field_name] = _new_field_reader(parent_type.fields.get(field_name))
    return readers[field_name]


def _new_field_reader(field_def: GraphQLField | None) -> FieldReader | None:
    # No definition: __typename and the other meta fields are not among the type's fields.
    if field_def is None or field_def.args:
        return None
    definition = field_def.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
    leaf_type = get_nullable_type(field_def.type)
    if (
        not isinstance(definition, StrawberryField)
        or not definition.is_basic_field
        # Strawberry's mark on the resolver that only calls default_resolver; a field with
        # exception handlers gets another one.
        or not getattr(field_def.resolve, "_is_default", False)
        or not is_leaf_type(leaf_type)
    ):
        return None
    return FieldReader(
        read=definition.default_resolver,
        attribute=definition.python_name,
        serialize=_serializer(leaf_type),
        nullable=not is_non_null_type(field_def.type),
    )


def _serializer(leaf_type: GraphQLLeafType) -> Callable[[Any], Any]:
    """The type's own serialization; for an enum, remembered per member (it scans the values)."""
    serialize = leaf_type.coerce_output_value
    if not isinstance(leaf_type, CustomGraphQLEnumType):
        return serialize
    enum_class = leaf_type.wrapped_cls
    names: dict[Any, Any] = {}

    def serialize_member(value: Any) -> Any:
        if type(value) is not enum_class:
            return serialize(value)
        name = names.get(value)
        if name is None:
            name = names[value] = serialize(value)
        return name

    return serialize_member


def _in_order(
    plan: SelectionPlan, leaves: dict[str, Any], others: dict[str, Any]
) -> dict[str, Any]:
    merged = {**leaves, **others}
    return {name: merged[name] for name in plan.response_names if name in merged}


async def _sent_by_plan(
    events: AsyncIterable[Any],
    plans: compiled.Plans,
    plan: compiled.EventPlan,
    context: Any,
    sink: LiveSink,
) -> AsyncGenerator[Any, None]:
    """A subscription's source stream, less the events the plan builds and `sink` sends:
    what is left (an event the plan declines, to be reported as graphql-core reports it) goes
    on to graphql-core's per-event execution, in its place in the stream. Once the client
    cannot be sent to, the stream ends; Strawberry's next message to it fails as it would."""
    async with aclosing(cast(AsyncGenerator[Any, None], events)):
        async for event in events:
            row = getattr(event, "row", None)
            if row is not None:
                try:
                    data = await plans.event_data(plan, context, row)
                except Exception:  # Declined, or a fault graphql-core reports with its path
                    pass
                else:
                    if not await sink.send_data(data):
                        return
                    continue
            yield event
