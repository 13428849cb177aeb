"""Operations endpoints, open without a key: /healthz, /readyz and /metrics (Prometheus).

Metrics live in a registry of the app's own, so several apps in one process keep apart. With
`--workers N` each process has its own: a scrape reaches one worker and reports only what that
worker counted (Prometheus sums them well enough when each worker is scraped as a target of its
own; through one port, successive scrapes land on different workers).

Labels are bounded: a REST request is counted by its route template (`/orgs/{org_id}/events`),
never its path; a GraphQL request by the name of one of the operations stored in `queries/`,
otherwise `other` (a name not stored there) or `anonymous` (no name).
"""

import asyncio
import logging
import time
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from sqlalchemy import text
from sqlalchemy.pool import QueuePool
from starlette.datastructures import QueryParams
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.persisted import PersistedOperations
from gateway.problems import Problem, problem_response
from gateway.responses import JSONResponse
from storage.broker import Broker
from storage.database import Database
from storage.events import EventRecord

logger = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 2.0
GRAPHQL_PATH = "/graphql"
# What is read of a GraphQL body to find its operation name; the body limit bounds it anyway.
MAX_NAMED_BODY_BYTES = 1024 * 1024
UNMATCHED_ROUTE = "unmatched"
# Events per write (one request) and per transaction (a group commit): 1 to a full batch.
EVENT_COUNT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)


class Metrics:
    """The app's Prometheus metrics, fed by the request middleware and the event writer."""

    def __init__(self, db: Database, broker: Broker) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "events_gateway_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "events_gateway_http_request_duration_seconds",
            "Time from a request's start to the end of its answer, by method and route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self.graphql = Counter(
            "events_gateway_graphql_requests",
            "GraphQL HTTP requests by operation (the name of one stored in queries/, else "
            "`other` or `anonymous`) and status.",
            ["operation", "status"],
            registry=self.registry,
        )
        self.events_written = Counter(
            "events_gateway_events_written",
            "Events committed by this process's event writer.",
            registry=self.registry,
        )
        self.write_sizes = Histogram(
            "events_gateway_write_events",
            "Events per write: a single POST is 1, a batch POST its length.",
            buckets=EVENT_COUNT_BUCKETS,
            registry=self.registry,
        )
        self.transaction_sizes = Histogram(
            "events_gateway_write_transaction_events",
            "Events per committed transaction: concurrent writes share one (group commit).",
            buckets=EVENT_COUNT_BUCKETS,
            registry=self.registry,
        )
        Gauge(
            "events_gateway_subscriptions",
            "GraphQL subscriptions open in this process.",
            registry=self.registry,
        ).set_function(broker.following)
        Gauge(
            "events_gateway_subscription_held_bytes",
            "Estimated memory of the events this process's subscription tails hold; at most "
            "EVENTS_GATEWAY_SUBSCRIPTION_MEMORY_MB.",
            registry=self.registry,
        ).set_function(broker.held_bytes)
        pool = db.engine.pool
        if isinstance(pool, QueuePool):
            in_use = Gauge(
                "events_gateway_db_pool_checked_out",
                "Connections of the session pool (writes, keys) in use.",
                registry=self.registry,
            )
            in_use.set_function(pool.checkedout)
            size = Gauge(
                "events_gateway_db_pool_size",
                "Connections the session pool keeps open (beyond it, up to max overflow more).",
                registry=self.registry,
            )
            size.set_function(pool.size)
        db.writer.on_commit.append(self._written)
        db.writer.on_transaction.append(self.transaction_sizes.observe)
        self.operation_names = frozenset(op.name for op in PersistedOperations.from_folder())

    def _written(self, _org_id: str, rows: list[EventRecord]) -> None:
        self.events_written.inc(len(rows))
        self.write_sizes.observe(len(rows))

    def operation(self, body: bytes, query_string: bytes) -> str:
        """The operation label of a GraphQL request (bounded: see the module docstring)."""
        try:
            payload: Any = orjson.loads(body) if body else dict(QueryParams(query_string))
        except orjson.JSONDecodeError:
            return "other"
        if not isinstance(payload, dict):
            return "other"
        name = payload.get("operationName") or payload.get("documentId")
        if name is None:
            return "anonymous"
        return name if isinstance(name, str) and name in self.operation_names else "other"


def _route_template(scope: Scope) -> str:
    routes: list[BaseRoute] = scope["app"].router.routes
    partial = None
    for route in routes:
        match, _child = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", UNMATCHED_ROUTE)
        if match is Match.PARTIAL and partial is None:
            partial = route  # the path matches, the method does not (405)
    return getattr(partial, "path", UNMATCHED_ROUTE)


class RequestMetrics:
    """ASGI middleware: count and time each HTTP request by route template and status."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = _route_template(scope)
        status = 500  # unless an answer starts: an exception escaped
        body = bytearray()
        is_graphql = route == GRAPHQL_PATH

        async def receive_teed() -> Message:
            # Keeps what the app reads of a GraphQL body, to name its operation afterwards.
            message = await receive()
            if message["type"] == "http.request" and len(body) <= MAX_NAMED_BODY_BYTES:
                body.extend(message.get("body", b""))
            return message

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_teed if is_graphql else receive, send_noting_status)
        finally:
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
            if is_graphql:
                named = bytes(body) if len(body) <= MAX_NAMED_BODY_BYTES else b"[]"
                operation = self.metrics.operation(named, scope["query_string"])
                self.metrics.graphql.labels(operation, str(status)).inc()


class Operations:
    """The three endpoints and the middleware that feeds /metrics, for one app."""

    def __init__(self, db: Database, broker: Broker) -> None:
        self.db = db
        self.metrics = Metrics(db, broker)
        self.middleware = Middleware(RequestMetrics, metrics=self.metrics)
        self.routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.scrape, methods=["GET"]),
        ]

    async def healthz(self, _request: Request) -> Response:
        """The process is up; the database is not asked."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, _request: Request) -> Response:
        """Ready when the database answers a trivial query in time."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS), self.db.engine.connect() as c:
                await c.execute(text("SELECT 1"))
        except Exception as error:
            # The class only: a driver's message may name the host, never worth the risk.
            logger.warning("readiness: the database did not answer (%s)", type(error).__name__)
            return problem_response(Problem(503, "The database is unreachable."))
        return JSONResponse({"status": "ready"})

    async def scrape(self, _request: Request) -> Response:
        """Every metric of this process, in Prometheus' text format."""
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)
