"""The `events-gateway` command: serve, upgrade the schema, administer orgs and keys, run a demo."""

import argparse
import asyncio
import logging
import logging.config
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import uvicorn
from alembic.util import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from gateway.app import create_app
from gateway.config import DATABASE_URL_VARIABLE, Settings
from gateway.demo import run_demo
from gateway.logs import logging_config
from gateway.persisted import PersistedOperations
from gateway.ui import AssetFetchError, fetch_assets
from schema import schema_sdl
from storage.database import Database, normalize_url
from storage.domain import ID_RULE, is_valid_id
from storage.keys import (
    DEFAULT_SCOPES,
    InvalidScopes,
    Scope,
    create_key,
    list_keys,
    parse_scopes,
    revoke_key,
)
from storage.migrate import upgrade_schema
from storage.orgs import OrganizationExists, create_org, get_org


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


async def _with_database(settings: Settings, work: Callable[[Database], Awaitable[None]]) -> None:
    db = settings.database()
    try:
        await db.create_schema()
        await work(db)
    finally:
        await db.dispose()
        await _sqlite_threads_finished()


async def _sqlite_threads_finished(timeout: float = 1.0) -> None:
    """Wait for aiosqlite's connection threads to end while the event loop still runs.

    When a SQLite file cannot be opened, aiosqlite (0.22) stops the connection's thread
    without waiting for it, and the thread then hands its last result to the event loop; once
    asyncio.run has closed the loop, that prints a traceback ("Event loop is closed") under
    the command's one-line error.
    """
    threads = [
        thread
        for thread in threading.enumerate()
        if thread.name.endswith("(_connection_worker_thread)")
    ]
    for thread in threads:
        await asyncio.to_thread(thread.join, timeout)
    await asyncio.sleep(0)  # the callbacks they scheduled run now


async def _reachable(_db: Database) -> None:
    """Nothing more to do: connecting and creating the schema is the check."""


def _say(message: str) -> None:
    print(message, file=sys.stderr)


async def db_upgrade(settings: Settings, say: Callable[[str], None] = _say) -> None:
    """Upgrade the schema to the newest revision; say which revision it was and is."""
    db = settings.database()
    try:
        before, after = await upgrade_schema(db.engine)
    finally:
        await db.dispose()
    if before == after:
        say(f"schema already at revision {after}")
    else:
        say(f"schema upgraded from {before or 'unversioned'} to {after}")


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Logging and transport limits for uvicorn; README's "Transport limits" says why."""
    if settings.log_format not in ("json", "text"):
        _fail(f"EVENTS_GATEWAY_LOG_FORMAT must be json or text, not {settings.log_format!r}")
    if settings.log_level.upper() not in logging.getLevelNamesMapping():
        _fail(f"EVENTS_GATEWAY_LOG_LEVEL is no logging level: {settings.log_level!r}")
    if settings.http_parser not in ("h11", "httptools"):
        _fail(f"EVENTS_GATEWAY_HTTP_PARSER must be h11 or httptools, not {settings.http_parser!r}")
    return {
        # Every process (workers too) logs JSON lines; the access lines are gateway/logs.py's.
        "log_config": logging_config(settings.log_format, settings.log_level),
        "access_log": False,
        "http": settings.http_parser,
        # h11 stops buffering a request's head past this; httptools has no such limit.
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,
    }


def serve(settings: Settings, *, host: str, port: int, workers: int, upgrade: bool) -> None:
    """Run REST, GraphQL and GraphiQL on uvicorn, in one process or several."""
    if workers > 1 and make_url(settings.database_url).get_backend_name() == "sqlite":
        # Measured (bench.writes --workers 2): under write load, processes queueing on
        # SQLite's one write lock time out after its busy timeout, and writes fail.
        _fail(
            "--workers above 1 needs PostgreSQL: SQLite takes one writer at a time, and "
            "writes from several processes time out waiting for it"
        )
    options = _uvicorn_options(settings)
    logging.config.dictConfig(options["log_config"])
    # Upgrade or reach the database first, once for all workers, so a wrong URL is one line
    # here, not a traceback from each worker's start-up.
    if upgrade:
        asyncio.run(db_upgrade(settings, logging.getLogger("gateway.cli").info))
    else:
        asyncio.run(_with_database(settings, _reachable))
    if workers == 1:
        uvicorn.run(create_app(settings, db=settings.database()), host=host, port=port, **options)
        return
    # Each worker builds its own app from the environment: the URL given on the command line
    # reaches them there.
    os.environ[DATABASE_URL_VARIABLE] = settings.database_url
    uvicorn.run(
        "gateway.app:create_app", factory=True, host=host, port=port, workers=workers, **options
    )


async def orgs_create(db: Database, org_id: str, name: str | None) -> None:
    """Create an org and its first key; the key alone goes to stdout."""
    if not is_valid_id(org_id):
        _fail(f"ORG_ID {ID_RULE}")
    async with db.session() as session:
        try:
            key, secret = await create_org(session, org_id=org_id, name=name)
        except OrganizationExists:
            _fail(f"organization {org_id!r} already exists; use `keys create` for another key")
    print(f"created organization {org_id!r} and key {key.id}", file=sys.stderr)
    print("the key is shown only this once:", file=sys.stderr)
    print(secret)


async def keys_create(db: Database, org_id: str, scopes: frozenset[Scope]) -> None:
    """Create another key for an org; the key alone goes to stdout."""
    async with db.reader() as reader:
        if await get_org(reader, org_id=org_id) is None:
            _fail(f"no organization {org_id!r}")
    async with db.session() as session:
        key, secret = await create_key(session, org_id=org_id, scopes=scopes)
    print(
        f"created key {key.id} for {org_id!r} with scope {key.scopes}; it is shown only this once:",
        file=sys.stderr,
    )
    print(secret)


def _scopes(raw: str) -> frozenset[Scope]:
    try:
        return parse_scopes(raw)
    except InvalidScopes as error:
        raise argparse.ArgumentTypeError(str(error)) from None


async def keys_list(db: Database, org_id: str) -> None:
    """Print an org's keys: id, prefix, creation and revocation times, never a secret."""
    async with db.reader() as reader:
        if await get_org(reader, org_id=org_id) is None:
            _fail(f"no organization {org_id!r}")
    async with db.session() as session:
        keys = await list_keys(session, org_id=org_id)
    # The prefix is all that identifies a secret here; the secret itself is never stored.
    print(f"{'KEY_ID':<22} {'PREFIX':<14} {'SCOPE':<12} {'CREATED':<26} REVOKED")
    for key in keys:
        created = key.created_at.isoformat(timespec="seconds")
        revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "-"
        print(f"{key.id:<22} {key.prefix + '...':<14} {key.scopes:<12} {created:<26} {revoked}")


async def keys_revoke(db: Database, key_id: str) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    async with db.session() as session:
        if not await revoke_key(session, key_id=key_id):
            _fail(f"no active key {key_id!r}")
    print(f"revoked {key_id}", file=sys.stderr)


def _event_count(raw: str) -> int:
    if not raw.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number of events, not {raw!r}")
    return int(raw)


def _worker_count(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of processes, 1 or more, not {raw!r}"
        )
    return int(raw)


def _assets_folder(settings: Settings) -> Path:
    if settings.ui_assets and not settings.ui_assets.startswith(("http://", "https://")):
        return Path(settings.ui_assets)
    return Path("ui-assets")


def assets_fetch(folder: Path) -> None:
    """Fill `folder` with the pinned GraphiQL and Swagger UI files, checked against their hashes."""
    try:
        written = fetch_assets(folder, say=_say)
    except AssetFetchError as error:
        _fail(f"assets: {error}")
    _say(f"{written} file(s) written; {folder} holds every pinned file")
    _say(f"serve them with EVENTS_GATEWAY_UI_ASSETS={folder.resolve()}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="events-gateway", description=__doc__)
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL (default: $EVENTS_GATEWAY_DATABASE_URL or sqlite ./events.db)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="serve REST, GraphQL and GraphiQL")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000)
    serve_parser.add_argument(
        "--workers", type=_worker_count, default=1, help="server processes (default 1)"
    )
    serve_parser.add_argument(
        "--no-upgrade",
        dest="upgrade",
        action="store_false",
        help="do not upgrade the schema first (run `db upgrade` yourself)",
    )

    db_commands = commands.add_parser("db", help="manage the database schema").add_subparsers(
        dest="action", required=True
    )
    db_upgrade_parser = db_commands.add_parser(
        "upgrade", help="upgrade the schema to the newest revision"
    )

    demo_parser = commands.add_parser("demo", help="fill a demo org with events and serve it")
    demo_parser.add_argument("--host", default="127.0.0.1")
    demo_parser.add_argument("--port", type=int, default=8000)
    demo_parser.add_argument("--events", type=_event_count, default=5000, help="default 5000")

    orgs = commands.add_parser("orgs", help="manage organizations").add_subparsers(
        dest="action", required=True
    )
    orgs_create_parser = orgs.add_parser("create", help="create an org and its first key")
    orgs_create_parser.add_argument("org_id", metavar="ORG_ID")
    orgs_create_parser.add_argument("--name")

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    keys_create_parser = keys.add_parser("create", help="create a key (printed once)")
    keys_create_parser.add_argument("org_id", metavar="ORG_ID")
    keys_create_parser.add_argument(
        "--scope",
        type=_scopes,
        default=DEFAULT_SCOPES,
        help="what the key may do: read (GETs, GraphQL queries and subscriptions), write "
        "(POSTs, mutations) or admin (both), or a list such as read,write (the default)",
    )
    keys_list_parser = keys.add_parser("list", help="list an org's keys")
    keys_list_parser.add_argument("org_id", metavar="ORG_ID")
    keys_revoke_parser = keys.add_parser("revoke", help="revoke a key")
    keys_revoke_parser.add_argument("key_id", metavar="KEY_ID")

    assets = commands.add_parser(
        "assets", help="GraphiQL's and /docs' files for EVENTS_GATEWAY_UI_ASSETS"
    ).add_subparsers(dest="action", required=True)
    assets_fetch_parser = assets.add_parser(
        "fetch", help="download the pinned files from the npm registry into a folder"
    )
    assets_fetch_parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to put them (default: $EVENTS_GATEWAY_UI_ASSETS if a folder, else ./ui-assets)",
    )

    commands.add_parser(
        "queries", help="list the operations of queries/ (persisted mode): name and sha256"
    )
    commands.add_parser(
        "schema", help="print the GraphQL schema (SDL), as kept in schema/schema.graphql"
    )

    # --database-url is accepted before or after the command name.
    for leaf in (
        serve_parser,
        db_upgrade_parser,
        demo_parser,
        orgs_create_parser,
        keys_create_parser,
        keys_list_parser,
        keys_revoke_parser,
    ):
        leaf.add_argument("--database-url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _run(args: argparse.Namespace, settings: Settings) -> None:
    match args.command, getattr(args, "action", None):
        case "serve", _:
            serve(
                settings,
                host=args.host,
                port=args.port,
                workers=args.workers,
                upgrade=args.upgrade,
            )
        case "db", "upgrade":
            asyncio.run(db_upgrade(settings))
        case "demo", _:
            run_demo(settings, host=args.host, port=args.port, event_count=args.events)
        case "orgs", "create":
            asyncio.run(
                _with_database(settings, lambda db: orgs_create(db, args.org_id, args.name))
            )
        case "keys", "create":
            asyncio.run(
                _with_database(settings, lambda db: keys_create(db, args.org_id, args.scope))
            )
        case "keys", "list":
            asyncio.run(_with_database(settings, lambda db: keys_list(db, args.org_id)))
        case "keys", "revoke":
            asyncio.run(_with_database(settings, lambda db: keys_revoke(db, args.key_id)))
        case "assets", "fetch":
            assets_fetch(args.dir or _assets_folder(settings))
        case "queries", _:
            for operation in PersistedOperations.from_folder():
                print(f"{operation.name}\t{operation.sha256}")
        case "schema", _:
            print(schema_sdl(), end="")


def _first_line(error: Exception) -> str:
    # SQLAlchemy wraps the driver's error and appends the SQL and a link: keep the driver's words.
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `events-gateway` console script."""
    args = _parser().parse_args(argv)
    settings = Settings.from_env(database_url=args.database_url)
    try:
        shown_url = make_url(normalize_url(settings.database_url)).render_as_string()
    except (ValueError, ArgumentError) as error:
        _fail(f"bad database URL: {_first_line(error)}")
    try:
        _run(args, settings)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except (SQLAlchemyError, OSError, CommandError) as error:
        _fail(f"database {shown_url}: {_first_line(error)}")
