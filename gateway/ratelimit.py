"""Per-API-key rate limits (EVENTS_GATEWAY_RATE_LIMIT), REST by request, GraphQL by cost.

Each key gets a budget, such as 600 per minute, kept by the `limits` library with its moving
window strategy: a request is allowed when its cost fits in what the key spent over the last
window, and a refused request spends nothing. The budget lives in this process (`memory://`)
or in Redis (`redis://host:port`), which every process and host pointed at it then shares.

A REST request costs 1. A GraphQL request costs its document's weight divided by
`GRAPHQL_WEIGHT_PER_UNIT` (rounded up, at least 1). The weight is 1 per selected field, and a
field with `first` or `limit` weighs 1 plus that many items (at most 1000) times the weight of
the fields under it; a connection selecting `edges` or `nodes` without them counts the 100
items it returns by default. So `OrgEvents` (a 100-event page, 17 fields under `events`)
weighs 1,704 and costs 4, while `events(first: 1000) { nodes { ...8 scalar fields } }`
weighs 9,002 and costs 19, and nested connections multiply. A document that does not parse
costs 1 and is answered by the GraphQL app as usual. A request costing more than the whole
budget is charged the whole budget, so it can still run once per window.

Over the budget, REST answers 429 problem+json and GraphQL 429 with a `RATE_LIMITED` error,
both with `Retry-After`. Every answer to a keyed request carries the budget as the fields of
draft-ietf-httpapi-ratelimit-headers-06: `RateLimit-Limit`, `RateLimit-Remaining`,
`RateLimit-Reset` (seconds until the budget starts to refill) and `RateLimit-Policy`.

The key is recognised by the SHA-256 hash the database stores, without a database round trip,
so an unknown key is counted like any other; requests without a key pass through, and the
routes answer 401 themselves. WebSocket subscriptions are not limited here: a subscription is
one long request, not a rate.
"""

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    parse,
)
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import Unauthenticated, key_from_headers
from gateway.problems import Problem, problem_response
from storage.events import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from storage.keys import hash_key

logger = logging.getLogger(__name__)

GRAPHQL_PATH = "/graphql"
GRAPHQL_WEIGHT_PER_UNIT = 500
PAGE_ARGUMENTS = ("first", "limit")
CONNECTION_FIELDS = {"edges", "nodes"}
STORAGE_SCHEMES = ("memory", "redis", "rediss")
DEFAULT_KEY_PREFIX = "events-gateway"


def parse_rate(text: str) -> RateLimitItem:
    """One `limits` rate such as `600/minute`; ValueError says what is wrong."""
    try:
        rates = parse_many(text)
    except ValueError:
        raise ValueError(
            f"must be a rate such as '600/minute' or '10 per second', got {text!r}"
        ) from None
    if len(rates) != 1:
        raise ValueError(f"must be a single rate such as '600/minute', got {text!r}")
    return rates[0]


def check_storage_uri(uri: str) -> str:
    """The URI itself if it names a storage this module opens; ValueError otherwise."""
    scheme, separator, _ = uri.partition("://")
    if not separator or scheme not in STORAGE_SCHEMES:
        raise ValueError(f"must be 'memory://' or 'redis://host:port[/db]', got {uri!r}")
    return uri


def open_storage(uri: str, *, key_prefix: str) -> Storage:
    """Async storage for `memory://` or `redis[s]://...` (connects when first used)."""
    check_storage_uri(uri)
    if uri.startswith("memory://"):
        return MemoryStorage(wrap_exceptions=True)
    return RedisStorage("async+" + uri, wrap_exceptions=True, key_prefix=key_prefix)


def graphql_cost(body: bytes, query_string: bytes, *, max_tokens: int) -> int:
    """What a GraphQL request spends of its key's budget (see the module docstring)."""
    try:
        requests = _graphql_requests(body, query_string)
        weight = sum(_document_weight(*request, max_tokens=max_tokens) for request in requests)
    except (ValueError, GraphQLError, RecursionError):
        return 1  # The GraphQL app answers what is wrong with it.
    return max(1, math.ceil(weight / GRAPHQL_WEIGHT_PER_UNIT))


def _graphql_requests(
    body: bytes, query_string: bytes
) -> list[tuple[str, dict[str, Any], str | None]]:
    """(query, variables, operation name) of each operation a request asks for."""
    if not body:
        params = QueryParams(query_string)
        variables = orjson.loads(params["variables"]) if params.get("variables") else {}
        payloads: Iterable[Any] = [{**params, "variables": variables}] if "query" in params else []
    else:
        decoded = orjson.loads(body)
        payloads = decoded if isinstance(decoded, list) else [decoded]
    requests = []
    for payload in payloads:
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            raise ValueError("not a GraphQL request")
        variables = payload.get("variables")
        name = payload.get("operationName")
        requests.append(
            (
                payload["query"],
                variables if isinstance(variables, dict) else {},
                name if isinstance(name, str) else None,
            )
        )
    return requests


def _document_weight(
    query: str, variables: dict[str, Any], operation_name: str | None, *, max_tokens: int
) -> int:
    document = parse(query, no_location=True, max_tokens=max_tokens)
    operations = [
        node for node in document.definitions if isinstance(node, OperationDefinitionNode)
    ]
    if operation_name is not None:
        operations = [op for op in operations if op.name and op.name.value == operation_name]
    return sum(_Weigher(document, operation, variables).weigh() for operation in operations)


class _Weigher:
    """Weighs one operation: 1 per field, paged fields times their page size."""

    def __init__(
        self, document: DocumentNode, operation: OperationDefinitionNode, variables: dict[str, Any]
    ) -> None:
        self.fragments = {
            node.name.value: node
            for node in document.definitions
            if isinstance(node, FragmentDefinitionNode)
        }
        self.variables = {
            definition.variable.name.value: definition.default_value.value
            for definition in operation.variable_definitions or ()
            if isinstance(definition.default_value, IntValueNode)
        }
        self.variables.update(variables)
        self.operation = operation
        # Each fragment is weighed once: spreading one twice in each of N nested fragments
        # would otherwise take 2^N steps.
        self._fragment_weights: dict[str, int] = {}
        self._weighing: set[str] = set()

    def weigh(self) -> int:
        return self._selections(self.operation.selection_set)

    def _selections(self, selection_set: SelectionSetNode | None) -> int:
        weight = 0
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                children = self._selections(selection.selection_set)
                weight += 1 + self._page_size(selection) * children
            elif isinstance(selection, InlineFragmentNode):
                weight += self._selections(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                weight += self._fragment(selection.name.value)
        return weight

    def _fragment(self, name: str) -> int:
        if name in self._fragment_weights:
            return self._fragment_weights[name]
        fragment = self.fragments.get(name)
        # A fragment spread inside itself is invalid; the app answers that.
        if fragment is None or name in self._weighing:
            return 0
        self._weighing.add(name)
        try:
            weight = self._selections(fragment.selection_set)
        finally:
            self._weighing.discard(name)
        self._fragment_weights[name] = weight
        return weight

    def _page_size(self, field: FieldNode) -> int:
        """How many items the field may return: its `first`/`limit`, or 1 if not a list."""
        for argument in field.arguments or ():
            if argument.name.value in PAGE_ARGUMENTS:
                value: object = None
                if isinstance(argument.value, IntValueNode):
                    value = int(argument.value.value)
                elif isinstance(argument.value, VariableNode):
                    value = self.variables.get(argument.value.name.value)
                if isinstance(value, int) and not isinstance(value, bool):
                    # Pages over the maximum are refused, so they cost what the maximum does.
                    return min(max(value, 0), MAX_PAGE_SIZE)
                return DEFAULT_PAGE_SIZE
        # A connection asked for without a page size still returns the default page.
        selected = field.selection_set.selections if field.selection_set else ()
        names = {node.name.value for node in selected if isinstance(node, FieldNode)}
        return DEFAULT_PAGE_SIZE if names & CONNECTION_FIELDS else 1


@dataclass(frozen=True)
class Spending:
    """The outcome of spending a request's cost: allowed or not, and the headers to send."""

    allowed: bool
    retry_after: int
    headers: dict[str, str]


class Budget:
    """Each API key's budget: `rate` (a `limits` rate string) kept in `storage_uri`.

    Built when the app is, so a bad rate or storage fails at start-up, not on a request."""

    def __init__(self, rate: str, *, storage_uri: str, key_prefix: str = DEFAULT_KEY_PREFIX):
        self.item = parse_rate(rate)
        self.limiter = MovingWindowRateLimiter(open_storage(storage_uri, key_prefix=key_prefix))

    async def spend(self, key_hash: str, cost: int) -> Spending:
        """Spend `cost` (at most the whole budget) of the key's budget if it has that much."""
        allowed = await self.limiter.hit(self.item, key_hash, cost=min(cost, self.item.amount))
        stats = await self.limiter.get_window_stats(self.item, key_hash)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        headers = {
            "RateLimit-Limit": str(self.item.amount),
            "RateLimit-Remaining": str(max(0, stats.remaining)),
            "RateLimit-Reset": str(reset),
            "RateLimit-Policy": f"{self.item.amount};w={self.item.get_expiry()}",
        }
        retry_after = max(1, reset)
        if not allowed:
            headers["Retry-After"] = str(retry_after)
        return Spending(allowed, retry_after, headers)


class RateLimit:
    """ASGI middleware: spend each keyed HTTP request's cost from its key's budget."""

    def __init__(self, app: ASGIApp, *, budget: Budget, graphql_max_tokens: int) -> None:
        self.app = app
        self.budget = budget
        self.graphql_max_tokens = graphql_max_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            key_hash = hash_key(key_from_headers(Headers(scope=scope)))
        except Unauthenticated:
            await self.app(scope, receive, send)
            return

        is_graphql = scope["path"] == GRAPHQL_PATH
        cost = 1
        if is_graphql:
            body, receive = await _read_body(receive)
            cost = graphql_cost(body, scope["query_string"], max_tokens=self.graphql_max_tokens)
        try:
            spending = await self.budget.spend(key_hash, cost)
        except StorageError as error:
            # An unreachable Redis should not take the API down with it: serve unlimited.
            logger.warning(
                "rate limit storage failed, request not limited: %r", error.storage_error
            )
            await self.app(scope, receive, send)
            return
        if not spending.allowed:
            refusal = _graphql_refusal if is_graphql else _rest_refusal
            await refusal(spending.retry_after, spending.headers)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(spending.headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _rest_refusal(retry_after: int, headers: dict[str, str]) -> Response:
    detail = f"Rate limit exceeded for this API key; retry in {retry_after} s."
    return problem_response(Problem(429, detail, headers=headers))


def _graphql_refusal(retry_after: int, headers: dict[str, str]) -> Response:
    error = {
        "message": f"Rate limit exceeded for this API key; retry in {retry_after} s.",
        "extensions": {"code": "RATE_LIMITED", "retryAfter": retry_after},
    }
    body = orjson.dumps({"data": None, "errors": [error]})
    return Response(body, status_code=429, headers=headers, media_type="application/json")


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a `receive` that replays it to the app."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return body, replay
