"""The key cache: valid keys are remembered briefly, unknown ones never."""

import pytest
from starlette.datastructures import Headers

from gateway.auth import Authenticator, Unauthenticated
from storage.database import Database
from storage.keys import create_key, revoke_key
from tests.factories import make_org


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(secret: str) -> Headers:
    return Headers({"authorization": f"Bearer {secret}"})


async def test_a_revoked_key_is_refused_once_its_cache_entry_expires(db: Database) -> None:
    await make_org(db, "acme")
    async with db.session() as session:
        key, secret = await create_key(session, org_id="acme")
    clock = Clock()
    authenticator = Authenticator(db, cache_seconds=2, clock=clock)
    assert (await authenticator.holder_for(bearer(secret))).org_id == "acme"
    async with db.session() as session:
        await revoke_key(session, key_id=key.id)

    clock.now += 1.9
    assert (await authenticator.holder_for(bearer(secret))).org_id == "acme"
    clock.now += 0.2
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        await authenticator.holder_for(bearer(secret))


async def test_without_a_cache_revocation_takes_effect_on_the_next_request(db: Database) -> None:
    await make_org(db, "acme")
    async with db.session() as session:
        key, secret = await create_key(session, org_id="acme")
    authenticator = Authenticator(db, cache_seconds=0)
    assert (await authenticator.holder_for(bearer(secret))).org_id == "acme"
    async with db.session() as session:
        await revoke_key(session, key_id=key.id)
    with pytest.raises(Unauthenticated):
        await authenticator.holder_for(bearer(secret))


async def test_an_unknown_key_is_not_remembered_so_a_new_key_works_at_once(db: Database) -> None:
    authenticator = Authenticator(db, cache_seconds=60, max_entries=2)
    with pytest.raises(Unauthenticated):
        await authenticator.holder_for(bearer("egw_not-a-key"))
    secrets = [await make_org(db, org_id) for org_id in ("a", "b", "c")]
    # More valid keys than the cache holds: the oldest entry makes room, all still work.
    for secret, org_id in zip(secrets * 2, ["a", "b", "c"] * 2, strict=True):
        assert (await authenticator.holder_for(bearer(secret))).org_id == org_id
