"""Request header size limit: 431 when a request's headers together exceed the limit.

`events-gateway serve` also has uvicorn's h11 parser stop buffering headers past the same limit
while they arrive; this check answers the headers that arrived whole before the parser could
object (a large header written at once), so the answer is the same either way.
"""

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.problems import Problem, problem_response


class HeaderSizeLimit:
    """Refuse HTTP requests and WebSocket handshakes whose header names and values, summed,
    exceed `max_bytes`."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        size = sum(len(name) + len(value) for name, value in scope["headers"])
        if size <= self.max_bytes:
            await self.app(scope, receive, send)
            return
        problem = Problem(431, f"The request headers are larger than {self.max_bytes} bytes.")
        if scope["type"] == "http":
            await problem_response(problem)(scope, receive, send)
        else:
            await send({"type": "websocket.close", "code": 1009})
