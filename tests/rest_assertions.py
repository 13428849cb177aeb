"""Assertions shared by the REST shim's tests: what every error answer must look like."""

from typing import Any

import httpx

PROBLEM_MEDIA_TYPE = "application/problem+json"


def assert_problem(answer: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """An RFC 9457 problem with this status (naming `field` when given); returns its body."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = answer.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert "Traceback" not in answer.text
    if field is not None:
        assert field in [error["field"] for error in body["errors"]], body
        assert all(error["message"] for error in body["errors"])
    return body
