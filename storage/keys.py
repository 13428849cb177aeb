"""API keys: random secrets shown once, stored as SHA-256 hashes, revocable."""

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, Select, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.driver import Reader
from storage.models import api_keys, utcnow

KEY_PREFIX = "egw_"


def hash_key(secret: str) -> str:
    # The secret carries 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


async def add_key(session: AsyncSession, *, org_id: str) -> tuple[Row, str]:
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
            )
            .returning(*api_keys.c)
        )
    ).one()
    return row, secret


async def create_key(session: AsyncSession, *, org_id: str) -> tuple[Row, str]:
    """Create a key for an org and commit; returns the stored row and the secret (once)."""
    row, secret = await add_key(session, org_id=org_id)
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


def _active_key_org() -> Select[Any]:
    return select(api_keys.c.org_id).where(
        api_keys.c.key_hash == bindparam("key_hash"), api_keys.c.revoked_at.is_(None)
    )


async def org_for_key(reader: Reader, *, key_hash: str) -> str | None:
    """The org an active key (given by its hash_key) belongs to; None if unknown or revoked."""
    rows = await reader.fetch("active_key_org", _active_key_org, {"key_hash": key_hash})
    return rows[0][0] if rows else None
