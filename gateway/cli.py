"""The `events-gateway` command: serve, administer orgs and keys, run a demo."""

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

import uvicorn

from gateway.app import create_app
from gateway.config import Settings
from storage.database import Database
from storage.domain import is_valid_id
from storage.keys import create_key, list_keys, revoke_key
from storage.orgs import OrganizationExists, create_org, get_org


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


async def _with_database(settings: Settings, work: Callable[[Database], Awaitable[None]]) -> None:
    db = Database(settings.database_url)
    try:
        await db.create_schema()
        await work(db)
    finally:
        await db.dispose()


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Run REST, GraphQL and GraphiQL on one uvicorn server."""
    uvicorn.run(create_app(settings), host=host, port=port, proxy_headers=True)


async def orgs_create(db: Database, org_id: str, name: str | None) -> None:
    if not is_valid_id(org_id):
        _fail("ORG_ID must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    async with db.session() as session:
        try:
            await create_org(session, org_id=org_id, name=name)
        except OrganizationExists:
            _fail(f"organization {org_id!r} already exists; use `keys create` for another key")
        key, secret = await create_key(session, org_id=org_id)
    print(f"created organization {org_id!r} and key {key.id}", file=sys.stderr)
    print("the key is shown only this once:", file=sys.stderr)
    print(secret)


async def keys_create(db: Database, org_id: str) -> None:
    async with db.session() as session:
        if await get_org(session, org_id=org_id) is None:
            _fail(f"no organization {org_id!r}")
        key, secret = await create_key(session, org_id=org_id)
    print(f"created key {key.id} for {org_id!r}; it is shown only this once:", file=sys.stderr)
    print(secret)


async def keys_list(db: Database, org_id: str) -> None:
    async with db.session() as session:
        if await get_org(session, org_id=org_id) is None:
            _fail(f"no organization {org_id!r}")
        keys = await list_keys(session, org_id=org_id)
    print(f"{'KEY_ID':<22} {'PREFIX':<12} {'CREATED':<26} REVOKED")
    for key in keys:
        revoked = key.revoked_at.isoformat() if key.revoked_at else "-"
        print(f"{key.id:<22} {key.prefix + '…':<12} {key.created_at.isoformat():<26} {revoked}")


async def keys_revoke(db: Database, key_id: str) -> None:
    async with db.session() as session:
        if not await revoke_key(session, key_id=key_id):
            _fail(f"no active key {key_id!r}")
    print(f"revoked {key_id}", file=sys.stderr)


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

    demo_parser = commands.add_parser("demo", help="fill a demo org with events and serve it")
    demo_parser.add_argument("--host", default="127.0.0.1")
    demo_parser.add_argument("--port", type=int, default=8000)
    demo_parser.add_argument("--events", type=int, default=5000)

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
    keys_list_parser = keys.add_parser("list", help="list an org's keys")
    keys_list_parser.add_argument("org_id", metavar="ORG_ID")
    keys_revoke_parser = keys.add_parser("revoke", help="revoke a key")
    keys_revoke_parser.add_argument("key_id", metavar="KEY_ID")

    # --database-url is accepted before or after the command name.
    for leaf in (
        serve_parser,
        demo_parser,
        orgs_create_parser,
        keys_create_parser,
        keys_list_parser,
        keys_revoke_parser,
    ):
        leaf.add_argument("--database-url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = Settings.from_env(database_url=args.database_url)
    if args.command == "serve":
        serve(settings, host=args.host, port=args.port)
    elif args.command == "demo":
        from gateway.demo import run_demo

        run_demo(settings, host=args.host, port=args.port, event_count=args.events)
    elif args.command == "orgs":
        asyncio.run(_with_database(settings, lambda db: orgs_create(db, args.org_id, args.name)))
    elif args.action == "create":
        asyncio.run(_with_database(settings, lambda db: keys_create(db, args.org_id)))
    elif args.action == "list":
        asyncio.run(_with_database(settings, lambda db: keys_list(db, args.org_id)))
    else:
        asyncio.run(_with_database(settings, lambda db: keys_revoke(db, args.key_id)))
