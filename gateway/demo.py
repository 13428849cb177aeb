"""`events-gateway demo`: a demo org full of realistic events, served with copy-paste examples."""

import asyncio
import json
import random
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn
from tqdm import tqdm

from gateway.app import create_app
from gateway.config import Settings
from storage.database import Database
from storage.domain import EventStatus, EventType, NewEvent
from storage.events import Page, list_events, log_events
from storage.keys import create_key
from storage.orgs import OrganizationExists, create_org

DEMO_ORG_ID = "demo"
DEMO_ORG_NAME = "Demo Org"
BATCH_SIZE = 500
SPREAD = timedelta(days=7)

# Listed hottest first: real traffic is skewed, a few containers take most of it.
CONTAINERS = (
    "vault-eu-1", "bucket-logs", "secrets-prod", "vault-us-1", "bucket-backups",
    "db-snapshots-prod", "registry-images", "bucket-media", "kms-keyring-payments",
    "vault-eu-2", "secrets-staging", "bucket-invoices", "share-finance", "tenant-acme",
    "audit-exports", "vault-ap-1", "bucket-ml-datasets", "secrets-ci", "share-legal",
    "kms-keyring-users", "db-snapshots-staging", "registry-charts", "tenant-globex",
    "share-hr", "bucket-static-assets", "edge-cache-fra", "edge-cache-iad", "archive-2023",
    "archive-2024", "tenant-initech",
)  # fmt: skip
PEOPLE = (
    "alice.martin@demo.example", "bob.nguyen@demo.example", "carla.rossi@demo.example",
    "dev.patel@demo.example", "emma.schmidt@demo.example", "farid.haddad@demo.example",
    "grace.kim@demo.example", "hugo.lefebvre@demo.example",
)  # fmt: skip
SERVICES = (
    "svc-backup@demo.iam", "svc-ci-deployer@demo.iam", "svc-log-shipper@demo.iam",
    "svc-billing@demo.iam",
)  # fmt: skip
LIFECYCLE = "system:lifecycle"

# (event type, status, weight out of 100): mostly successful reads, 10% failures.
MIX = (
    (EventType.ACCESS, EventStatus.SUCCESS, 64),
    (EventType.ACCESS, EventStatus.FAILURE, 7),
    (EventType.BLOCK, EventStatus.SUCCESS, 6),
    (EventType.CREATE, EventStatus.SUCCESS, 5),
    (EventType.EXPIRE, EventStatus.SUCCESS, 4),
    (EventType.UPDATE, EventStatus.SUCCESS, 8),
    (EventType.UPDATE, EventStatus.FAILURE, 2),
    (EventType.DELETE, EventStatus.SUCCESS, 3),
    (EventType.DELETE, EventStatus.FAILURE, 1),
)
FAILURE_REASONS = {
    EventType.ACCESS: ("permission_denied", "invalid_signature", "token_expired", "mfa_required"),
    EventType.UPDATE: ("permission_denied", "version_conflict"),
    EventType.DELETE: ("legal_hold", "permission_denied"),
}


def _ip(rng: random.Random) -> str:
    # Private and documentation ranges only: the demo never shows a real public address.
    if rng.random() < 0.7:
        return f"10.{rng.randint(0, 40)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return f"{rng.choice(('203.0.113', '198.51.100'))}.{rng.randint(1, 254)}"


def _actor(event_type: EventType, status: EventStatus, rng: random.Random) -> str | None:
    if event_type is EventType.EXPIRE:
        return LIFECYCLE
    if event_type is EventType.BLOCK or (status is EventStatus.FAILURE and rng.random() < 0.3):
        return None  # blocked and many failed callers never get far enough to be identified
    return rng.choice(SERVICES) if rng.random() < 0.35 else rng.choice(PEOPLE)


def _details(event_type: EventType, status: EventStatus, rng: random.Random) -> dict[str, Any]:
    obj = f"{rng.choice(('reports', 'exports', 'db', 'img', 'keys'))}/{rng.randint(1000, 9999)}"
    match event_type:
        case EventType.ACCESS:
            details: dict[str, Any] = {"ip": _ip(rng), "action": rng.choice(("read", "list"))}
        case EventType.BLOCK:
            reason = rng.choice(("rate_limit", "ip_denylist", "geo_restriction"))
            details = {"ip": _ip(rng), "reason": reason}
        case EventType.CREATE:
            details = {"object": obj, "size_bytes": rng.randint(1_000, 50_000_000)}
        case EventType.EXPIRE:
            details = {"object": obj, "policy": rng.choice(("retention-30d", "retention-90d"))}
        case EventType.UPDATE:
            details = {"field": rng.choice(("retention_days", "acl", "tags")), "ip": _ip(rng)}
        case EventType.DELETE:
            details = {"object": obj, "ip": _ip(rng)}
    if status is EventStatus.FAILURE:
        details["reason"] = rng.choice(FAILURE_REASONS[event_type])
    return details


def generate_events(count: int, *, now: datetime, rng: random.Random) -> list[tuple[str, NewEvent]]:
    """`count` (container_id, event) pairs spread over the 7 days before `now`, oldest first."""
    kinds = [(event_type, status) for event_type, status, _ in MIX]
    weights = [weight for _, _, weight in MIX]
    container_weights = [1 / (rank + 1) for rank in range(len(CONTAINERS))]
    items = []
    for _ in range(count):
        event_type, status = rng.choices(kinds, weights)[0]
        event = NewEvent(
            event_type=event_type,
            status=status,
            timestamp=now - SPREAD * rng.random(),
            actor=_actor(event_type, status, rng),
            details=_details(event_type, status, rng),
        )
        items.append((rng.choices(CONTAINERS, container_weights)[0], event))
    # Logged in time order, so the newest events also have the largest ids, as in real life.
    items.sort(key=lambda item: item[1].timestamp)
    return items


async def _fill(db: Database, items: Sequence[tuple[str, NewEvent]]) -> None:
    with tqdm(total=len(items), unit="event", desc="Logging demo events", file=sys.stderr) as bar:
        for start in range(0, len(items), BATCH_SIZE):
            batch = items[start : start + BATCH_SIZE]
            async with db.session() as session:
                await log_events(session, org_id=DEMO_ORG_ID, items=batch)
            bar.update(len(batch))


async def prepare_demo(db: Database, *, event_count: int) -> tuple[str, str]:
    """Create and fill the demo org unless it exists; returns a fresh key and a container id."""
    await db.create_schema()
    async with db.session() as session:
        try:
            _key, secret = await create_org(session, org_id=DEMO_ORG_ID, name=DEMO_ORG_NAME)
            created = True
        except OrganizationExists:
            _key, secret = await create_key(session, org_id=DEMO_ORG_ID)
            created = False
    if created:
        await _fill(db, generate_events(event_count, now=datetime.now(UTC), rng=random.Random()))
    else:
        print(f"Organization {DEMO_ORG_ID!r} already exists: keeping its events.", file=sys.stderr)
    async with db.reader() as reader:
        newest = (await list_events(reader, org_id=DEMO_ORG_ID, page=Page(limit=1))).rows
    return secret, newest[0]["container_id"] if newest else CONTAINERS[0]


def _base_url(host: str, port: int) -> str:
    # A server bound to every interface is still reached through loopback from this machine.
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def usage_text(*, base_url: str, key: str, container_id: str) -> str:
    """The copy-paste curl lines, GraphiQL address, header and sample query for the demo."""
    org = f"{base_url}/orgs/{DEMO_ORG_ID}"
    auth = shlex.quote(f"Authorization: Bearer {key}")
    lists = [
        f"{org}/events?limit=5",
        *(
            f"{org}/container_events/by_{name}?limit=5"
            for name in ("access", "block", "create", "expire", "fail")
        ),
        f"{org}/containers/{container_id}/events?limit=5",
    ]
    body = json.dumps(
        {"event_type": "ACCESS", "status": "FAILURE", "actor": "you@demo.example",
         "details": {"ip": "203.0.113.7", "reason": "permission_denied"}}
    )  # fmt: skip
    post = (
        f"curl -X POST -H {auth} -H 'Content-Type: application/json' "
        f"-d {shlex.quote(body)} {shlex.quote(f'{org}/containers/{container_id}/events')}"
    )
    query = (
        f'query {{ org(id: "{DEMO_ORG_ID}") {{ name events(filter: FAIL, first: 5) '
        "{ edges { node { id eventType status timestamp actor details container { id } } } "
        "pageInfo { hasNextPage endCursor } } } }"
    )
    return "\n".join(
        [
            f"Demo org {DEMO_ORG_ID!r} is ready. API key (shown once): {key}",
            "",
            "REST, copy and paste:",
            *(f"  curl -H {auth} {shlex.quote(url)}" for url in lists),
            f"  {post}",
            "",
            f"GraphiQL: {base_url}/graphql",
            "  Paste into its Headers pane:",
            f"  {json.dumps({'Authorization': f'Bearer {key}'})}",
            "  Then run:",
            f"  {query}",
            "",
        ]
    )


def run_demo(settings: Settings, *, host: str, port: int, event_count: int) -> None:
    """Prepare the demo org, print how to call it, then serve until interrupted."""
    db = Database(settings.database_url)

    async def prepare() -> tuple[str, str]:
        try:
            return await prepare_demo(db, event_count=event_count)
        finally:
            await db.dispose()

    key, container_id = asyncio.run(prepare())
    print(usage_text(base_url=_base_url(host, port), key=key, container_id=container_id))
    sys.stdout.flush()  # before uvicorn takes over, or a piped reader waits for the key
    uvicorn.run(create_app(settings), host=host, port=port)
