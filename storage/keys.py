"""API keys: random secrets shown once, stored as SHA-256 hashes, revocable."""

import hashlib
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Row, Select, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.driver import Reader
from storage.models import api_keys, utcnow

KEY_PREFIX = "egw_"


class Scope(StrEnum):
    """What a key may do. `read`: every GET and GraphQL query and subscription; `write`: every
    POST and GraphQL mutation; `admin`: both (and whatever administration the API grows)."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


DEFAULT_SCOPES = frozenset({Scope.READ, Scope.WRITE})


class InvalidScopes(ValueError):
    pass


def parse_scopes(text: str) -> frozenset[Scope]:
    """Scopes from text such as "read", "read,write" or "read write"; raises InvalidScopes."""
    names = text.replace(",", " ").split()
    if not names:
        raise InvalidScopes("name at least one scope: read, write or admin")
    try:
        return frozenset(Scope(name.lower()) for name in names)
    except ValueError:
        raise InvalidScopes(f"{text!r} is not a scope: use read, write or admin") from None


def scopes_text(scopes: Iterable[Scope]) -> str:
    """The stored form: space-separated, in the enum's order."""
    chosen = set(scopes)
    return " ".join(scope.value for scope in Scope if scope in chosen)


def allows(scopes: frozenset[Scope], needed: Scope) -> bool:
    return needed in scopes or Scope.ADMIN in scopes


@dataclass(frozen=True)
class KeyHolder:
    """Who a request's key speaks for: the key's id (never its secret), its org, its scopes."""

    key_id: str
    org_id: str
    scopes: frozenset[Scope]

    def may(self, needed: Scope) -> bool:
        return allows(self.scopes, needed)


def hash_key(secret: str) -> str:
    # The secret carries 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


async def add_key(
    session: AsyncSession, *, org_id: str, scopes: Iterable[Scope] = DEFAULT_SCOPES
) -> tuple[Row, str]:
    """Add a key to the session's transaction; returns the stored row and the secret (once)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = (
        await session.execute(
            api_keys.insert()
            .values(
                id="key_" + secrets.token_hex(8),
                org_id=org_id,
                key_hash=hash_key(secret),
                prefix=secret[:10],
                created_at=utcnow(),
                scopes=scopes_text(scopes),
            )
            .returning(*api_keys.c)
        )
    ).one()
    return row, secret


async def create_key(
    session: AsyncSession, *, org_id: str, scopes: Iterable[Scope] = DEFAULT_SCOPES
) -> tuple[Row, str]:
    """Create a key for an org and commit; returns the stored row and the secret (once)."""
    row, secret = await add_key(session, org_id=org_id, scopes=scopes)
    await session.commit()
    return row, secret


async def list_keys(session: AsyncSession, *, org_id: str) -> Sequence[Row]:
    query = select(api_keys).where(api_keys.c.org_id == org_id).order_by(api_keys.c.created_at)
    return (await session.execute(query)).all()


async def revoke_key(session: AsyncSession, *, key_id: str) -> bool:
    """Revoke a key and commit; False when no such active key exists."""
    result = await session.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    await session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]


def _active_key() -> Select[Any]:
    return select(api_keys.c.id, api_keys.c.org_id, api_keys.c.scopes).where(
        api_keys.c.key_hash == bindparam("key_hash"), api_keys.c.revoked_at.is_(None)
    )


async def holder_of_key(reader: Reader, *, key_hash: str) -> KeyHolder | None:
    """Who an active key (given by its hash_key) speaks for; None if unknown or revoked."""
    rows = await reader.fetch("active_key", _active_key, {"key_hash": key_hash})
    if not rows:
        return None
    key_id, org_id, scopes = rows[0]
    return KeyHolder(key_id, org_id, parse_scopes(scopes))


# Well under the bound parameters SQLite (32,766) and asyncpg (32,767) take in one statement.
_HOLDERS_PER_QUERY = 10_000


async def active_holders(
    session: AsyncSession, *, key_ids: Collection[str]
) -> dict[str, KeyHolder]:
    """The holders of those of `key_ids` still active, by key id; a revoked key is missing."""
    ids = list(key_ids)
    holders: dict[str, KeyHolder] = {}
    for start in range(0, len(ids), _HOLDERS_PER_QUERY):
        query = select(api_keys.c.id, api_keys.c.org_id, api_keys.c.scopes).where(
            api_keys.c.id.in_(ids[start : start + _HOLDERS_PER_QUERY]),
            api_keys.c.revoked_at.is_(None),
        )
        for key_id, org_id, scopes in (await session.execute(query)).all():
            holders[key_id] = KeyHolder(key_id, org_id, parse_scopes(scopes))
    return holders
