"""The GraphQL endpoint: Strawberry's ASGI view behind API-key auth, answering JSON errors.

Subscriptions run over WebSocket (graphql-transport-ws) on the same path. The key travels in
the `connection_init` payload, as `{"Authorization": "Bearer <key>"}` or `{"X-API-Key": "<key>"}`:
none or a malformed one closes the socket with 4401, an unknown or revoked one with 4403.
"""

from dataclasses import dataclass, field
from typing import Any

from cross_web import HTTPException as StrawberryHTTPException
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState
from strawberry import Schema
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UnsetType

from gateway.auth import CHALLENGE, Authenticator, Unauthenticated, key_from_headers
from gateway.responses import JSONResponse, dumps
from schema.context import Context
from schema.subscription import LiveContext
from storage.broker import Broker
from storage.database import Database

KEY_PARAMS = ("authorization", "x-api-key")


def graphql_error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class SocketContext(LiveContext):
    """A WebSocket connection's context; Strawberry fills `connection_params` from the
    `connection_init` payload before calling `on_ws_connect`."""

    websocket: WebSocket | None = None
    connection_params: dict[str, object] = field(default_factory=dict)


class _SocketAdapter(ASGIWebSocketAdapter):
    async def close(self, code: int, reason: str) -> None:
        # on_ws_connect closes with its own code (4401) before Strawberry's rejection (4403).
        if self.ws.application_state != WebSocketState.DISCONNECTED:
            await super().close(code, reason)


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's view with the gateway's auth; GraphiQL's page itself needs no key."""

    def __init__(
        self,
        schema: Schema,
        *,
        db: Database,
        authenticator: Authenticator,
        broker: Broker,
        graphiql: bool = True,
    ) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql" if graphiql else None,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
        )
        self.websocket_adapter_class = _SocketAdapter
        self.db = db
        self.authenticator = authenticator
        self.broker = broker

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
                request.state.org_id = await self.authenticator.org_for(request.headers)
            except Unauthenticated as error:
                return graphql_error(401, str(error), "UNAUTHENTICATED", CHALLENGE)
        try:
            return await self.run(request)
        except StrawberryHTTPException as error:
            code = "METHOD_NOT_ALLOWED" if error.status_code == 405 else "BAD_REQUEST"
            return graphql_error(error.status_code, error.reason, code)

    def _is_ide_page(self, request: Request) -> bool:
        return bool(self.graphql_ide) and self.should_render_graphql_ide(
            self.request_adapter_class(request)
        )

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        if isinstance(request, WebSocket):
            # No org until connection_init brings a key (on_ws_connect).
            return SocketContext(db=self.db, org_id=None, broker=self.broker, websocket=request)
        # GraphiQL's page is served without a key; it resolves nothing, so no org is needed.
        org_id = getattr(request.state, "org_id", None)
        return LiveContext(db=self.db, org_id=org_id, broker=self.broker)

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
            await context.websocket.close(code=4401, reason=reason)
            raise ConnectionRejectionError from None
        try:
            context.org_id = await self.authenticator.org_for(headers)
        except Unauthenticated:
            raise ConnectionRejectionError from None
        return await super().on_ws_connect(context)

    def encode_json(self, data: object) -> bytes:
        return dumps(data)
