"""RFC 9457 problem details: the one way the REST shim reports an error."""

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """An error answer: raise it anywhere in a REST handler."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers


def invalid(field: str, message: str) -> Problem:
    """A 400 naming the one offending field."""
    return invalid_fields([{"field": field, "message": message}])


def invalid_fields(errors: list[dict[str, str]]) -> Problem:
    """A 400 naming every offending field, each with its message."""
    detail = "; ".join(f"{item['field']}: {item['message']}" for item in errors)
    return Problem(400, detail, errors=errors)


def problem_response(problem: Problem) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(problem.status).phrase,
        "status": problem.status,
        "detail": problem.detail,
    }
    if problem.errors:
        body["errors"] = problem.errors
    return Response(
        orjson.dumps(body),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


async def handle_problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


async def handle_http_exception(_request: Request, exc: Exception) -> Response:
    # Starlette's own 404 (unknown path) and 405 (wrong method, with its Allow header).
    assert isinstance(exc, HTTPException)
    detail = {404: "No resource at this path.", 405: "Method not allowed on this path."}
    message = detail.get(exc.status_code, exc.detail)
    return problem_response(Problem(exc.status_code, message, headers=exc.headers))


async def handle_client_disconnect(_request: Request, _exc: Exception) -> Response:
    # The client left before its request body arrived: nobody reads this answer, and it is no
    # server fault to log with a traceback.
    return Response(status_code=400)


async def handle_unexpected(_request: Request, _exc: Exception) -> Response:
    # The traceback goes to the server log (Starlette's ServerErrorMiddleware), never the client.
    return problem_response(Problem(500, "An internal error occurred."))
