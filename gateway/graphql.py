"""The GraphQL endpoint: Strawberry's ASGI view behind API-key auth, answering JSON errors."""

from typing import Any

from cross_web import HTTPException as StrawberryHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry import Schema
from strawberry.asgi import GraphQL

from gateway.auth import CHALLENGE, Authenticator, Unauthenticated
from gateway.responses import JSONResponse, dumps
from schema.context import Context
from storage.database import Database


def graphql_error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}
    return JSONResponse(body, status_code=status, headers=headers)


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's view with the gateway's auth; GraphiQL's page itself needs no key."""

    def __init__(
        self,
        schema: Schema,
        *,
        db: Database,
        authenticator: Authenticator,
        graphiql: bool = True,
    ) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql" if graphiql else None,
            subscription_protocols=(),
        )
        self.db = db
        self.authenticator = authenticator

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
        # GraphiQL's page is served without a key; it resolves nothing, so no org is needed.
        return Context(db=self.db, org_id=getattr(request.state, "org_id", None))

    def encode_json(self, data: object) -> bytes:
        return dumps(data)
