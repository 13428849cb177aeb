"""Request body size limit: 413 before a handler reads more than the limit."""

import re

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.graphql import graphql_error
from gateway.problems import Problem, problem_response


class _BodyTooLarge(Exception):
    pass


# Batch ingest (POST /orgs/{org_id}/events) carries up to 10,000 events in one body.
BATCH_PATH = re.compile(r"/orgs/[^/]+/events")
GRAPHQL_PATH = "/graphql"


class BodySizeLimit:
    """Reject bodies over the limit, by Content-Length up front or while streaming:
    `batch_max_bytes` for batch ingest, `max_bytes` for every other request."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, batch_max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.batch_max_bytes = batch_max_bytes

    def _limit(self, scope: Scope) -> int:
        is_batch = scope["method"] == "POST" and BATCH_PATH.fullmatch(scope["path"])
        return self.batch_max_bytes if is_batch else self.max_bytes

    @staticmethod
    def _too_large(scope: Scope, limit: int) -> Response:
        message = f"The request body is larger than {limit} bytes."
        # GraphQL clients read `errors`, not problem details: they get a coded GraphQL error.
        if scope["path"] == GRAPHQL_PATH:
            return graphql_error(413, message, "PAYLOAD_TOO_LARGE")
        return problem_response(Problem(413, message))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, limit)(scope, receive, send)
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._too_large(scope, limit)(scope, receive, send)
