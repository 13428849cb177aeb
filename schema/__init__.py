"""The Strawberry schema, assembled in one place with its abuse limits."""

from datetime import datetime

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.types import ExecutionContext

from schema.errors import ErrorCodes, is_unexpected
from schema.execution import GatewayExecutor
from schema.mutation import Mutation
from schema.query import Query
from schema.scalars import DateTime


class GatewaySchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Log server faults with their traceback; a client's bad request is not one.
        super().process_errors([e for e in errors if is_unexpected(e)], execution_context)


def build_schema(
    *, max_depth: int = 10, max_aliases: int = 30, max_tokens: int = 2000
) -> GatewaySchema:
    """The gateway's schema; the limits guard against hostile documents."""
    # Each limiter makes new rule classes when constructed. The validation cache is keyed by
    # the rules, so they are made once here: per request they would miss the cache every time.
    limit_rules = [
        *QueryDepthLimiter(max_depth=max_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules,
    ]
    return GatewaySchema(
        query=Query,
        mutation=Mutation,
        extensions=[
            ErrorCodes,
            lambda: MaxTokensLimiter(max_token_count=max_tokens),
            lambda: AddValidationRules(limit_rules),
            lambda: ParserCache(maxsize=256),
            lambda: ValidationCache(maxsize=256),
        ],
        execution_context_class=GatewayExecutor,
        scalar_overrides={datetime: DateTime},
    )
