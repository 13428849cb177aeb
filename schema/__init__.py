"""The Strawberry schema, assembled in one place with its abuse limits."""

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import strawberry
from graphql import (
    ASTValidationRule,
    GraphQLError,
    NoSchemaIntrospectionCustomRule,
    OperationDefinitionNode,
    ValidationContext,
)
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.schema.schema import DEFAULT_ALLOWED_OPERATION_TYPES
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.graphql import OperationType

from schema.compiled import Plans
from schema.errors import is_unexpected
from schema.execution import (
    COMPILED_PLANS,
    GatewayExecutor,
    convert_large_lists_beside_the_loop,
)
from schema.mutation import Mutation
from schema.query import Query
from schema.scalars import DateTime
from schema.subscription import StreamErrorCodes, Subscription


class GatewaySchema(strawberry.Schema):
    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        # One answer per request: a subscription needs a stream (WebSocket) to answer on.
        allowed = set(allowed_operation_types or DEFAULT_ALLOWED_OPERATION_TYPES)
        result = await super().execute(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            allowed - {OperationType.SUBSCRIPTION},
            operation_extensions,
        )
        if result.errors:
            result.errors = [self._coded(error) for error in result.errors]
        answered = getattr(context_value, "compiled_operation", None)
        plans = COMPILED_PLANS.get(self._schema)
        if (
            answered is not None
            and plans is not None
            and query is not None
            and operation_extensions is None
            and not result.errors
            and not result.extensions
        ):
            plans.remember(query, operation_name, answered)
        return result

    async def answer_planned(
        self,
        query: str,
        operation_name: str | None,
        variables: dict[str, Any] | None,
        context: Any,
    ) -> dict[str, Any] | None:
        """The data of a query whose text a compiled plan answered before, straight from the
        plan (no extension, parser, validation or executor call); None when `execute` must
        answer. Encode it with orjson's default options: its UTC times may be datetimes.
        In process, it skips ~0.4 ms of the 1 ms a 100-event page costs (issue 15)."""
        plans = COMPILED_PLANS.get(self._schema)
        if plans is None:
            return None
        return await plans.answer(self._schema, query, operation_name, variables, context)

    def _coded(self, error: GraphQLError) -> GraphQLError:
        """An error without a code escaped parsing or validation, outside ErrorCodes: a server
        fault, logged with its traceback and masked."""
        if (error.extensions or {}).get("code"):
            return error
        super().process_errors([error])
        return GraphQLError("Unexpected error.", extensions={"code": "INTERNAL_SERVER_ERROR"})

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Log server faults with their traceback; a client's bad request is not one.
        super().process_errors([e for e in errors if is_unexpected(e)], execution_context)


class NoIntrospection(NoSchemaIntrospectionCustomRule):
    """Refuse `__schema` and `__type` (not `__typename`) with a code of their own."""

    def report_error(self, error: GraphQLError) -> None:
        error.extensions = {"code": "INTROSPECTION_DISABLED"}
        super().report_error(error)


class OperationNameRequired(SchemaExtension):
    """The spec's GetOperation: a document of several operations needs `operationName` to
    pick one (Strawberry would run the first)."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        # `operation_name` falls back to the first operation's: only the given one tells.
        if context._provided_operation_name is None and document is not None:
            operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
            if len(operations) > 1:
                raise GraphQLError(
                    "Must provide operation name if query contains multiple operations."
                )
        yield


def _known_fragments_only(rule: type[ASTValidationRule]) -> type[ASTValidationRule]:
    """The depth rule looks each spread fragment up and fails with a KeyError on an unknown
    one; such a document is left to KnownFragmentNamesRule, which reports it."""

    class Rule(rule):  # type: ignore[valid-type, misc]
        def __init__(self, context: ValidationContext) -> None:
            try:
                super().__init__(context)
            except KeyError:
                ASTValidationRule.__init__(self, context)

    return Rule


def build_schema(
    *,
    max_depth: int = 10,
    max_aliases: int = 30,
    max_tokens: int = 2000,
    introspection: bool = True,
    compiled: bool = True,
) -> GatewaySchema:
    """The gateway's schema; the limits guard against hostile documents."""
    # Each limiter makes new rule classes when constructed. The validation cache is keyed by
    # the rules, so they are made once here: per request they would miss the cache every time.
    limit_rules = [
        *map(_known_fragments_only, QueryDepthLimiter(max_depth=max_depth).validation_rules),
        *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules,
    ]
    if not introspection:
        limit_rules.append(NoIntrospection)
    schema = GatewaySchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[
            StreamErrorCodes,  # ErrorCodes, for subscriptions' results too
            lambda: MaxTokensLimiter(max_token_count=max_tokens),
            lambda: AddValidationRules(limit_rules),
            OperationNameRequired,
            lambda: ParserCache(maxsize=256),
            lambda: ValidationCache(maxsize=256),
        ],
        execution_context_class=GatewayExecutor,
        scalar_overrides={datetime: DateTime},
    )
    convert_large_lists_beside_the_loop(schema)
    if compiled:
        COMPILED_PLANS[schema._schema] = Plans()
    return schema


def schema_sdl() -> str:
    """The schema in GraphQL SDL, as `events-gateway schema` prints it and schema/schema.graphql
    keeps it (tests/test_schema_sdl.py fails when the two differ)."""
    return build_schema().as_str() + "\n"
