"""API keys on requests: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""

import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.datastructures import Headers

from storage.database import Database
from storage.keys import KeyHolder, hash_key, holder_of_key

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="events-gateway"'}


class Unauthenticated(Exception):
    """No usable API key on the request; the message says why (never the key)."""


def key_from_headers(headers: Headers) -> str:
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthenticated("Authorization header must be 'Bearer <api key>'.")
        return credentials.strip()
    api_key = headers.get("x-api-key")
    if api_key:
        return api_key.strip()
    raise Unauthenticated("An API key is required: send 'Authorization: Bearer <key>'.")


class Authenticator:
    """Resolves a request's key to its holder (key id, org, scopes), remembering valid keys for
    `cache_seconds`.

    Every request needs its key checked; a database round trip for each would cost as much as
    the page itself. The price is that a revoked key keeps working for up to `cache_seconds`
    in each process. Unknown keys are never cached, and only hashes are kept.
    """

    def __init__(
        self,
        db: Database,
        *,
        cache_seconds: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._cache_seconds = cache_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._valid: OrderedDict[str, tuple[KeyHolder, float]] = OrderedDict()

    async def holder_for(self, headers: Headers) -> KeyHolder:
        """Who the request's key speaks for; raises Unauthenticated otherwise."""
        key_hash = hash_key(key_from_headers(headers))
        now = self._clock()
        cached = self._valid.get(key_hash)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self._db.reader() as reader:
            holder = await holder_of_key(reader, key_hash=key_hash)
        if holder is None:
            self._valid.pop(key_hash, None)
            raise Unauthenticated("The API key is unknown or revoked.")
        if self._cache_seconds > 0:
            self._valid[key_hash] = (holder, now + self._cache_seconds)
            self._valid.move_to_end(key_hash)
            if len(self._valid) > self._max_entries:
                self._valid.popitem(last=False)
        return holder
