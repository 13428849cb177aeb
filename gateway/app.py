"""The ASGI application: REST shim, GraphQL and GraphiQL in one Starlette app."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.routing import Route, WebSocketRoute

from gateway import counts, rest
from gateway.auth import Authenticator, KeyWatch
from gateway.config import Settings
from gateway.graphql import GraphQLApp
from gateway.headers import HeaderSizeLimit
from gateway.limits import BodySizeLimit
from gateway.logs import RequestLog
from gateway.openapi import openapi_document
from gateway.ops import Operations
from gateway.persisted import PersistedOperations
from gateway.problems import (
    Problem,
    handle_client_disconnect,
    handle_http_exception,
    handle_problem,
    handle_unexpected,
)
from gateway.ratelimit import Budget, RateLimit
from gateway.responses import JSONResponse
from gateway.timeouts import RequestTimeout
from gateway.ui import UIAssets, graphiql_page
from gateway.urls import public_base, redirect_slashes
from schema import build_schema
from storage.broker import Broker, fan_out
from storage.database import Database

GC_YOUNG_THRESHOLD = 10_000  # allocations between the collector's young passes (see lifespan)


def create_app(
    settings: Settings | None = None,
    *,
    db: Database | None = None,
    broker: Broker | None = None,
) -> Starlette:
    """Build the gateway; the schema is created on start-up if the database lacks it."""
    settings = settings or Settings.from_env()
    db = db or settings.database()
    authenticator = Authenticator(db, cache_seconds=settings.key_cache_seconds)
    # Open sockets lose a revoked key as soon as REST requests do.
    key_watch = KeyWatch(db, authenticator)
    broker = broker or Broker(memory_bytes=settings.subscription_memory_mb * 1024 * 1024)
    operations = Operations(db, broker)  # /healthz, /readyz, /metrics
    ui_assets = UIAssets.configured(settings.ui_assets)  # GraphiQL's and /docs' files
    graphql = GraphQLApp(
        build_schema(
            max_depth=settings.graphql_max_depth,
            max_aliases=settings.graphql_max_aliases,
            max_tokens=settings.graphql_max_tokens,
            introspection=settings.graphql_introspection,
            compiled=settings.graphql_compiled,
        ),
        db=db,
        authenticator=authenticator,
        broker=broker,
        key_watch=key_watch,
        graphiql=settings.graphiql,
        persisted=PersistedOperations.from_folder() if settings.graphql_persisted_only else None,
        graphiql_page=graphiql_page(ui_assets, PersistedOperations.from_folder()),
    )
    document = openapi_document()
    # Off unless EVENTS_GATEWAY_RATE_LIMIT is set; a bad rate or storage fails here, at start.
    rate_limit: list[Middleware] = []
    if settings.rate_limit:
        budget = Budget(
            settings.rate_limit,
            storage_uri=settings.rate_limit_storage,
            key_prefix=settings.rate_limit_key_prefix,
        )
        rate_limit.append(
            Middleware(RateLimit, budget=budget, graphql_max_tokens=settings.graphql_max_tokens)
        )

    async def openapi(_request: object) -> JSONResponse:
        return JSONResponse(document)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await db.create_schema()
        # What exists at start-up lives for the whole process: keeping it out of the garbage
        # collector's full passes makes each pass cost what the requests allocated, not more.
        gc.freeze()
        # A GraphQL page builds ~1,000 containers (edges, nodes, details) that live until the
        # answer is written: at the default 700, young passes ran during every page and
        # walked them all. At 10,000, most die by reference count before a pass runs
        # (bench.graphql, SQLite, paired runs: GraphQL CPU per request 4-7% lower).
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        async with fan_out(db, broker), key_watch.running():
            yield
        await db.dispose()

    app = Starlette(
        routes=[
            # Before the REST shim's routes, so no `{param}` there can ever claim `/counts`.
            *counts.routes,
            *rest.routes,
            # Every method: GraphQL answers those it does not take with a coded 405 of its own.
            Route("/graphql", graphql),
            WebSocketRoute("/graphql", graphql),  # subscriptions
            Route("/openapi.json", openapi, methods=["GET"]),
            *ui_assets.routes(),  # /docs, and /ui-assets/ when served from a local folder
            *operations.routes,
        ],
        middleware=[
            # Outermost: every answer below, errors included, carries the request id.
            Middleware(RequestLog),
            # Next: counts and times every answer below, refusals of the limits included.
            operations.middleware,
            Middleware(HeaderSizeLimit, max_bytes=settings.max_header_bytes),
            Middleware(RequestTimeout, seconds=settings.request_timeout),
            Middleware(
                BodySizeLimit,
                max_bytes=settings.max_body_bytes,
                batch_max_bytes=settings.max_batch_body_bytes,
            ),
            # After the body limit, so the GraphQL bodies it reads to weigh are bounded.
            *rate_limit,
        ],
        exception_handlers={
            Problem: handle_problem,
            HTTPException: handle_http_exception,
            ClientDisconnect: handle_client_disconnect,
            Exception: handle_unexpected,
        },
        lifespan=lifespan,
    )
    app.state.db = db
    app.state.authenticator = authenticator
    app.state.broker = broker
    app.state.settings = settings
    app.state.public_url = public_base(settings.public_url)
    redirect_slashes(app.router, app.state.public_url)
    return app
