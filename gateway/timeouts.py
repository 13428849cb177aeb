"""The per-request time limit: a request not answered in time gets 503 and its work is cancelled."""

import asyncio
import logging

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.graphql import graphql_error
from gateway.problems import Problem, problem_response

logger = logging.getLogger(__name__)

GRAPHQL_PATH = "/graphql"


class RequestTimeout:
    """Cancel an HTTP request's handling once it has run `seconds` (its body's upload
    included) and answer 503: problem+json, or a GraphQL error coded `TIMEOUT` on /graphql.
    WebSockets are long-lived by design and not limited; `seconds <= 0` turns the limit off.

    A write already handed to the event writer still commits (see storage/writer.py): a
    client retrying after a 503 should send an `Idempotency-Key`."""

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    def _timed_out(self, scope: Scope) -> Response:
        message = f"The request was not answered within {self.seconds:g} seconds."
        if scope["path"] == GRAPHQL_PATH:
            return graphql_error(503, message, "TIMEOUT")
        return problem_response(Problem(503, message))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.seconds <= 0:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        deadline = asyncio.timeout(self.seconds)
        try:
            async with deadline:
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if not deadline.expired():
                raise  # a timeout of the handler's own, not the request's limit
            logger.warning(
                "request cancelled after its time limit",
                extra={"limit_seconds": self.seconds, "path": scope["path"]},
            )
            if not started:
                await self._timed_out(scope)(scope, receive, send)
