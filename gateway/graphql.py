"""The GraphQL endpoint: Strawberry's ASGI view behind API-key auth, answering JSON errors.

Subscriptions run over WebSocket (graphql-transport-ws) on the same path. The key travels in
the `connection_init` payload, as `{"Authorization": "Bearer <key>"}` or `{"X-API-Key": "<key>"}`:
none or a malformed one closes the socket with 4401, an unknown or revoked one with 4403.
A key revoked later closes its open sockets with 4403 too (gateway.auth.KeyWatch).

A client that leaves, politely or not, is no error: whatever was being sent to it is dropped
and logged at debug level.
"""

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any, cast

import orjson
from cross_web import AsyncHTTPRequestAdapter
from cross_web import HTTPException as StrawberryHTTPException
from graphql import GraphQLError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry import Schema
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLRequestData
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.http.parse_content_type import parse_content_type
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    ErrorMessage,
    SubscribeMessage,
)
from strawberry.types.unset import UnsetType

from gateway.auth import (
    CHALLENGE,
    REVOKED,
    SCOPES_CHANGED,
    Authenticator,
    KeyWatch,
    Unauthenticated,
    key_from_headers,
)
from gateway.persisted import PersistedOperationError, PersistedOperations
from gateway.responses import JSONResponse, dumps
from schema import GatewaySchema
from schema.context import Context
from schema.execution import LIVE_SINK
from schema.subscription import LiveContext
from storage.broker import Broker
from storage.database import Database
from storage.domain import load_json
from storage.keys import KeyHolder

logger = logging.getLogger(__name__)

KEY_PARAMS = ("authorization", "x-api-key")
SHARED_RESULTS_KEPT = 256  # results' JSON kept for the other subscribers they go to
# A POST body that GraphQLApp._answer_planned may answer: nothing else in it.
_PLAIN_BODY = frozenset({"query", "operationName", "variables"})
# Strawberry's own refusals; 404 is the GraphiQL page when it is turned off.
HTTP_ERROR_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


def graphql_error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}
    return JSONResponse(body, status_code=status, headers=headers)


class GraphQLRequestError(StrawberryHTTPException):
    """A request refused before execution, answered with its own `extensions.code`."""

    def __init__(self, status_code: int, reason: str, code: str) -> None:
        super().__init__(status_code, reason)
        self.code = code


@dataclass
class SocketContext(LiveContext):
    """A WebSocket connection's context; Strawberry fills `connection_params` from the
    `connection_init` payload before calling `on_ws_connect`."""

    websocket: WebSocket | None = None
    connection_params: dict[str, object] = field(default_factory=dict)
    # Set by on_ws_connect: who the key spoke for then, and the headers to check it again.
    holder: KeyHolder | None = None
    key_headers: Headers | None = None


# Starlette has checked the message by then, so a RuntimeError is the server refusing to
# send on a connection already closing: uvicorn's "after sending 'websocket.close'" once the
# client's close frame is in, Starlette's own once this side has closed.
_GONE = (WebSocketDisconnect, RuntimeError)


async def close_socket(websocket: WebSocket, code: int, reason: str) -> None:
    """Close with `code` unless closed already; a client already gone needs no close frame."""
    if websocket.application_state == WebSocketState.DISCONNECTED:
        return
    with suppress(*_GONE):
        await websocket.close(code=code, reason=reason)


class SharedResults:
    """The JSON text of `next` messages, each result's data encoded once for every subscriber
    it is sent to: compiled plans hand all the subscribers of one operation the very same data
    object for an event (schema.compiled.Plans.event_data), so only the message's `id` differs.
    The text is exactly what `dumps` writes of the whole message."""

    def __init__(self, kept: int = SHARED_RESULTS_KEPT) -> None:
        self.kept = kept
        # By the data's id, with the data itself so that the id stays its own.
        self._encoded: OrderedDict[int, tuple[object, bytes]] = OrderedDict()

    def text(self, message: Mapping[str, object]) -> str:
        payload = message.get("payload")
        if (
            list(message) != ["id", "type", "payload"]
            or message["type"] != "next"
            or type(payload) is not dict
            or payload.keys() != {"data"}
        ):
            return dumps(message).decode()
        return self.next_text(message["id"], payload["data"])

    def next_text(self, operation_id: object, data: object) -> str:
        """The text of `{"id": operation_id, "type": "next", "payload": {"data": data}}`."""
        found = self._encoded.get(id(data))
        if found is None or found[0] is not data:
            found = (data, dumps(data))
            self._encoded[id(data)] = found
            while len(self._encoded) > self.kept:
                self._encoded.popitem(last=False)
        head = b'{"id":' + dumps(operation_id) + b',"type":"next","payload":{"data":'
        return (head + found[1] + b"}}").decode()


class _SocketAdapter(ASGIWebSocketAdapter):
    async def send_json(self, message: Mapping[str, object]) -> None:
        # Strawberry sends what encode_json returns as bytes in binary frames; clients of
        # graphql-transport-ws (gql, graphql-ws in browsers) accept only text frames.
        try:
            await self.ws.send_text(cast("GraphQLApp", self.view).shared_results.text(message))
        except _GONE as error:
            raise WebSocketDisconnected from error

    async def send_next(self, operation_id: str, data: dict[str, Any]) -> bool:
        """An event's `next` message, as send_json sends it; False once the client is gone."""
        text = cast("GraphQLApp", self.view).shared_results.next_text(operation_id, data)
        try:
            await self.ws.send_text(text)
        except _GONE:
            return False
        return True

    async def close(self, code: int, reason: str) -> None:
        # on_ws_connect closes with its own code (4401) before Strawberry's rejection (4403).
        await close_socket(self.ws, code, reason)


@dataclass(frozen=True)
class _PlannedNext:
    """An operation's LIVE_SINK: what a compiled plan builds of an event, sent as its `next`
    message (Operation.send_next's message for a result without errors or extensions)."""

    socket: _SocketAdapter
    operation: Operation[Context, None]

    async def send_data(self, data: dict[str, Any]) -> bool:
        if self.operation.completed:  # as Operation.send_operation_message: nothing more
            return True
        return await self.socket.send_next(self.operation.id, data)


class _TransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    _closing: asyncio.Task[None] | None = None

    @property
    def app(self) -> "GraphQLApp":
        return cast("GraphQLApp", self.view)

    @property
    def socket_context(self) -> SocketContext:
        assert isinstance(self.context, SocketContext)
        return self.context

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        holder = self.socket_context.holder
        if self.connection_acknowledged and holder is not None:
            self.app.key_watch.watch(self, holder)

    def key_lost(self, reason: str) -> None:
        """The key watch's word that the key was revoked or changed: close with 4403."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close_for_key(reason))

    async def _close_for_key(self, reason: str) -> None:
        # The operations first, so that the close frame is the last thing the client gets.
        for operation_id in list(self.operations):
            await self.cleanup_operation(operation_id)
        await self.websocket.close(4403, reason)

    async def _key_still_holds(self) -> bool:
        """Check the key again, as REST does each request (through the same cache)."""
        if self._closing is not None:
            return False
        context = self.socket_context
        assert context.key_headers is not None  # on_ws_connect sets it before connection_ack
        try:
            holder = await self.app.authenticator.holder_for(context.key_headers)
        except Unauthenticated:
            self.key_lost(REVOKED)
            return False
        if holder != context.holder:
            self.key_lost(SCOPES_CHANGED)
            return False
        return True

    async def shutdown(self) -> None:
        holder = self.socket_context.holder
        if holder is not None:
            self.app.key_watch.forget(self, holder.key_id)
        await super().shutdown()
        if self._closing is not None:
            await asyncio.wait({self._closing})

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        # The operation's own task: the sink is set in its context only.
        LIVE_SINK.set(_PlannedNext(cast(_SocketAdapter, self.websocket), operation))
        await super().run_operation(operation)

    async def handle_task_exception(self, error: Exception) -> None:
        if isinstance(error, WebSocketDisconnected):
            logger.debug("a subscription's client left while it was being sent a result")
            return
        await super().handle_task_exception(error)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        if self.connection_acknowledged and not await self._key_still_holds():
            return
        # Persisted-operations mode holds over WebSocket too: the stored text runs, or nothing.
        persisted = getattr(self.view, "persisted", None)
        payload: Any = message.get("payload")
        if persisted is not None and isinstance(payload, dict):
            try:
                query = persisted.document(
                    query=payload.get("query"),
                    extensions=payload.get("extensions"),
                    document_id=payload.get("documentId"),
                )
            except PersistedOperationError as error:
                coded = GraphQLError(error.message, extensions={"code": error.code})
                refusal: ErrorMessage = {
                    "id": message["id"],
                    "type": "error",
                    "payload": [coded.formatted],
                }
                await self.send_message(refusal)
                return
            message = {**message, "payload": {**payload, "query": query}}
        await super().handle_subscribe(message)


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's view with the gateway's auth; GraphiQL's page itself needs no key."""

    def __init__(
        self,
        schema: Schema,
        *,
        db: Database,
        authenticator: Authenticator,
        broker: Broker,
        key_watch: KeyWatch,
        graphiql: bool = True,
        persisted: PersistedOperations | None = None,
        graphiql_page: str | None = None,
    ) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql" if graphiql else None,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
        )
        self.websocket_adapter_class = _SocketAdapter
        self.graphql_transport_ws_handler_class = _TransportWSHandler
        # Set: only these operations are executed (EVENTS_GATEWAY_GRAPHQL_PERSISTED_ONLY).
        self.persisted = persisted
        # The gateway's own GraphiQL page (gateway/ui.py); None keeps Strawberry's CDN page.
        self.graphiql_page = graphiql_page
        self.db = db
        self.authenticator = authenticator
        # Closes sockets whose key is revoked, while the app's lifespan runs its passes.
        self.key_watch = key_watch
        self.broker = broker
        self.shared_results = SharedResults()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        response = await self._answer(request)
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        if not self._is_ide_page(request):
            try:
                request.state.holder = await self.authenticator.holder_for(request.headers)
            except Unauthenticated as error:
                return graphql_error(401, str(error), "UNAUTHENTICATED", CHALLENGE)
        try:
            planned = await self._answer_planned(request)
            return planned if planned is not None else await self.run(request)
        except GraphQLRequestError as error:
            return graphql_error(error.status_code, error.reason, error.code)
        except StrawberryHTTPException as error:
            code = HTTP_ERROR_CODES.get(error.status_code, "BAD_REQUEST")
            return graphql_error(error.status_code, error.reason, code)

    async def _answer_planned(self, request: Request) -> Response | None:
        """A POSTed query the schema answers from its compiled plan (answer_planned), as
        Strawberry's view would answer it; None leaves the request to the view. Only a plain
        JSON body of `query`, `operationName` and `variables` goes this way: anything else
        (persisted operations, extensions, streaming, GET) takes the view's own path."""
        if request.method != "POST" or self.persisted is not None:
            return None
        content_type, _ = parse_content_type(request.headers.get("content-type", ""))
        if "application/json" not in content_type:
            return None
        if self._get_stream_transport_from_headers(request.headers) is not None:
            return None
        schema = cast(GatewaySchema, self.schema)
        try:
            data = load_json(await request.body())
        except (ValueError, RecursionError):
            return None
        if type(data) is not dict or not data.keys() <= _PLAIN_BODY:
            return None
        query, name, variables = data.get("query"), data.get("operationName"), data.get("variables")
        if (
            type(query) is not str
            or not (name is None or type(name) is str)
            or not (variables is None or type(variables) is dict)
        ):
            return None
        context = await self.get_context(request, None)
        answered = await schema.answer_planned(query, name, variables, context)
        if answered is None:
            return None
        # orjson's defaults, not encode_json's UTC "Z": the plan's UTC datetimes come out as
        # the DateTime scalar writes them (answer_planned); every other value, as encode_json.
        return Response(orjson.dumps({"data": answered}), media_type="application/json")

    async def render_graphql_ide(self, request: Request) -> Response:
        if self.graphiql_page is None:
            return await super().render_graphql_ide(request)
        return HTMLResponse(self.graphiql_page)

    def _is_ide_page(self, request: Request) -> bool:
        return bool(self.graphql_ide) and self.should_render_graphql_ide(
            self.request_adapter_class(request)
        )

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        if isinstance(request, WebSocket):
            # No org until connection_init brings a key (on_ws_connect).
            return SocketContext(db=self.db, org_id=None, broker=self.broker, websocket=request)
        # GraphiQL's page is served without a key; it resolves nothing, so no org is needed.
        holder: KeyHolder | None = getattr(request.state, "holder", None)
        if holder is None:
            return LiveContext(db=self.db, org_id=None, broker=self.broker)
        return LiveContext(
            db=self.db,
            org_id=holder.org_id,
            broker=self.broker,
            key_id=holder.key_id,
            scopes=holder.scopes,
        )

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        assert isinstance(context, SocketContext) and context.websocket is not None
        # Only the key's two names are read, in any case, as HTTP header names are.
        given = {
            name.lower(): value
            for name, value in context.connection_params.items()
            if name.lower() in KEY_PARAMS
        }
        try:
            keys = {name: value for name, value in given.items() if isinstance(value, str)}
            if len(keys) != len(given):
                raise Unauthenticated("The API key in connection_init must be a string.")
            headers = Headers(headers=keys)
            key_from_headers(headers)
        except (Unauthenticated, UnicodeEncodeError) as error:
            reason = str(error) if isinstance(error, Unauthenticated) else "Malformed API key."
            await close_socket(context.websocket, 4401, reason)
            raise ConnectionRejectionError from None
        try:
            holder = await self.authenticator.holder_for(headers)
        except Unauthenticated:
            raise ConnectionRejectionError from None
        context.org_id, context.key_id, context.scopes = holder.org_id, holder.key_id, holder.scopes
        context.holder, context.key_headers = holder, headers
        return await super().on_ws_connect(context)

    def encode_json(self, data: object) -> bytes:
        return dumps(data)

    def parse_json(self, data: str | bytes) -> Any:
        """A body, or GET's `variables` or `extensions`: a JSON object, else a coded 400 (a
        list goes on, to be refused as a batch or as variables that are not an object)."""
        try:
            # orjson, as REST bodies: json.loads took 64 ms over 10,000 events, on the event loop.
            value = load_json(data)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep or too long a number
            raise GraphQLRequestError(400, "Expected valid JSON.", "BAD_REQUEST") from None
        if not isinstance(value, dict | list):
            raise GraphQLRequestError(400, "Expected a JSON object.", "BAD_REQUEST")
        return value

    def _validate_batch_request(self, request_data: Any, protocol: Any) -> None:
        raise GraphQLRequestError(
            400,
            "Batching is not supported: send one operation per request.",
            "BATCHING_NOT_SUPPORTED",
        )

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        data = await super().parse_http_body(request)
        if self.persisted is None or not isinstance(data, GraphQLRequestData):
            return data
        document_id = None
        if data.query is None:  # Strawberry keeps no documentId: read it where it was sent
            if request.method == "GET":
                document_id = request.query_params.get("documentId")
            else:
                document_id = self.parse_json(await request.get_body()).get("documentId")
        try:
            query = self.persisted.document(
                query=data.query, extensions=data.extensions, document_id=document_id
            )
        except PersistedOperationError as error:
            raise GraphQLRequestError(400, error.message, error.code) from None
        return replace(data, query=query)
