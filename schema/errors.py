"""GraphQL errors with `extensions.code`, and the extension that codes and masks them all."""

from collections.abc import Iterator
from typing import Any

from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import GraphQLError, GraphQLSyntaxError
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionResult


class CodedError(Exception):
    """An error the client should see as is, with a stable code."""

    code = "BAD_USER_INPUT"

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.extensions = extensions


class Forbidden(CodedError):
    """The API key may not do this: its scopes leave it out (storage.keys.Scope)."""

    code = "FORBIDDEN"


class NotFound(CodedError):
    code = "NOT_FOUND"


class BadUserInput(CodedError):
    code = "BAD_USER_INPUT"


class IdempotencyKeyReusedError(CodedError):
    code = "IDEMPOTENCY_KEY_REUSED"


class IdempotencyKeyInFlightError(CodedError):
    code = "IDEMPOTENCY_KEY_IN_FLIGHT"


class WriteOutcomeUnknownError(CodedError):
    """The commit went unanswered and could not be checked: the events may have been stored."""

    code = "WRITE_OUTCOME_UNKNOWN"


def is_unexpected(error: GraphQLError) -> bool:
    """A fault of the server: raised while resolving a field, and not a CodedError."""
    return error.path is not None and not isinstance(error.original_error, CodedError)


class ErrorCodes(SchemaExtension):
    """Give every error a code; mask unexpected faults so no internals reach the client.

    Errors outside field execution (syntax, validation, variable coercion, limits) carry no
    path: they are the request's fault. An error raised while resolving a field is masked
    unless it is a CodedError.
    """

    def on_operation(self) -> Iterator[None]:
        try:
            yield
        except GraphQLError as error:
            # ParserCache parses outside Strawberry's own error handling, so a syntax error
            # escapes the operation instead of becoming its result: code it on its way out.
            raise self._coded(error) from None
        result = self.execution_context.result
        if isinstance(result, ExecutionResult | GraphQLExecutionResult) and result.errors:
            result.errors = [self._coded(error) for error in result.errors]

    @staticmethod
    def _coded(error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if isinstance(original, CodedError):
            error.extensions = {"code": original.code, **original.extensions}
            return error
        if not is_unexpected(error):
            if isinstance(error, GraphQLSyntaxError):
                default = "GRAPHQL_PARSE_FAILED"
            elif original is not None:
                default = "BAD_USER_INPUT"  # a variable's value did not coerce
            else:
                default = "GRAPHQL_VALIDATION_FAILED"
            extensions = error.extensions or {}
            error.extensions = {**extensions, "code": extensions.get("code", default)}
            return error
        return GraphQLError(
            "Unexpected error.",
            nodes=error.nodes,
            path=error.path,
            extensions={"code": "INTERNAL_SERVER_ERROR"},
        )
