"""Structured logs: one JSON object per line on stderr, each carrying its request's id.

What is never logged: API keys (the Authorization and X-API-Key headers are not read here),
request and response bodies, and so no event's `details`. The query string is kept, but only
the REST list parameters keep their values: any other parameter's value (a GraphQL GET's
`query` and `variables`, a key a client wrongly put in the URL) is logged as `REDACTED`, and so
is the name of any parameter that is neither these nor a usual name for a key, since a key
pasted bare (`?egw_...`) is a name. A value holding a key's prefix is never logged.
"""

import logging
import re
import time
import traceback
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.problems import handle_unexpected
from storage.keys import KEY_PREFIX

REQUEST_ID_HEADER = "x-request-id"
# A client's own id is kept when it is this tame; anything else is replaced by a fresh one.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Query parameters whose values are logged: the REST lists' own, none of which carries a secret.
LOGGED_QUERY_VALUES = frozenset(
    {"limit", "cursor", "since", "until", "order", "container_id", "by", "filter"}
)
# Parameters whose names are logged (with values only as above): any other name could be a
# secret itself, such as a key pasted bare (`?egw_...`), and is logged as REDACTED=REDACTED.
LOGGED_QUERY_NAMES = LOGGED_QUERY_VALUES | {
    # A GraphQL GET's own, and where clients usually (wrongly) put a key.
    *("query", "variables", "operationName", "extensions"),
    *("api_key", "apikey", "key", "token", "access_token"),
}
_MAX_USER_AGENT = 256

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

access_logger = logging.getLogger("gateway.access")
error_logger = logging.getLogger("gateway.error")

# Attributes every LogRecord has; whatever else a record holds came in `extra` and is logged.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    request_id = getattr(record, "request_id", None) or request_id_var.get()
    if request_id:
        fields["request_id"] = request_id
    fields.update((k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES)
    if record.exc_info and record.exc_info[0] is not None:
        kind = record.exc_info[0]
        fields["exc_type"] = f"{kind.__module__}.{kind.__qualname__}"
        fields["traceback"] = "".join(traceback.format_exception(*record.exc_info))
    return fields


class JSONFormatter(logging.Formatter):
    """A record as one JSON object: time (RFC 3339, UTC), level, logger, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """A record as one readable line for a terminal, its fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        trace = fields.pop("traceback", None)
        line = " ".join(
            [
                datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3],
                record.levelname,
                record.name,
                record.getMessage(),
                *(f"{key}={value}" for key, value in fields.items()),
            ]
        )
        return f"{line}\n{trace.rstrip()}" if trace else line


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the server: every logger, uvicorn's too, on stderr."""
    formatter = JSONFormatter if log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gateway": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "gateway",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        # uvicorn's own loggers write through the root handler, as JSON like the rest.
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi")
        },
    }


def _request_id(headers: Headers) -> str:
    given = headers.get(REQUEST_ID_HEADER, "")
    return given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _logged_query(raw: bytes) -> str:
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    return urlencode([_logged_pair(name, value) for name, value in pairs])


def _logged_pair(name: str, value: str) -> tuple[str, str]:
    """A parameter as logged: a key pasted as a bare parameter (`?egw_...`) is in its name."""
    if name not in LOGGED_QUERY_NAMES:
        return "REDACTED", "REDACTED"
    if name not in LOGGED_QUERY_VALUES or KEY_PREFIX in value:
        return name, "REDACTED"
    return name, value


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


class RequestLog:
    """Give each request an id (the client's `X-Request-ID` when sane), echo it on the answer,
    stamp it on every log line written meanwhile, and log one access line per request (one at
    a WebSocket's open and one at its close)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = _request_id(headers)
        token = request_id_var.set(request_id)
        request = {
            "path": scope["path"],
            "query": _logged_query(scope.get("query_string", b"")),
            "client": _client(scope),
            "user_agent": headers.get("user-agent", "")[:_MAX_USER_AGENT],
        }
        try:
            if scope["type"] == "http":
                await self._http(scope, receive, send, request_id, request)
            else:
                await self._websocket(scope, receive, send, request_id, request)
        finally:
            request_id_var.reset(token)

    async def _http(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, request: dict[str, Any]
    ) -> None:
        started = time.perf_counter()
        status: int | None = None
        sent_bytes = 0
        id_header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), id_header]}
            elif message["type"] == "http.response.body":
                sent_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:
            error_logger.exception(
                "unhandled %s answering %s %s",
                type(error).__name__,
                scope["method"],
                scope["path"],
            )
            if status is not None:
                raise  # the answer is half sent: the server must drop the connection
            # Answered here rather than by Starlette's outer error middleware, so the 500 too
            # carries the request id, and the traceback is logged once, with it.
            response = await handle_unexpected(Request(scope), error)
            await response(scope, receive, send_with_id)
        finally:
            access_logger.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    **request,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "bytes": sent_bytes,
                },
            )

    async def _websocket(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, request: dict[str, Any]
    ) -> None:
        started = time.perf_counter()
        close_code: int | None = None
        id_header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal close_code
            if message["type"] == "websocket.accept":
                message = {**message, "headers": [*message.get("headers", []), id_header]}
                access_logger.info("websocket open %s", scope["path"], extra=request)
            elif message["type"] == "websocket.close":
                close_code = message.get("code", 1000)
            await send(message)

        async def receive_close() -> Message:
            nonlocal close_code
            message = await receive()
            if message["type"] == "websocket.disconnect" and close_code is None:
                close_code = message.get("code", 1005)
            return message

        try:
            await self.app(scope, receive_close, send_with_id)
        finally:
            access_logger.info(
                "websocket closed %s %s",
                scope["path"],
                close_code,
                extra={
                    **request,
                    "close_code": close_code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
