"""API keys on requests: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from starlette.datastructures import Headers

from storage.database import Database
from storage.keys import KeyHolder, active_holders, hash_key, holder_of_key

logger = logging.getLogger(__name__)

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


REVOKED = "The API key was revoked."
SCOPES_CHANGED = "The API key's scopes changed: connect again."
# With no key cache, sockets are still re-checked only this often.
MIN_WATCH_SECONDS = 0.25


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
        self.cache_seconds = cache_seconds
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
        if self.cache_seconds > 0:
            self._valid[key_hash] = (holder, now + self.cache_seconds)
            self._valid.move_to_end(key_hash)
            if len(self._valid) > self._max_entries:
                self._valid.popitem(last=False)
        return holder

    def forget(self, key_id: str) -> None:
        """Drop a key known to be revoked or changed, so it is looked up again from now on."""
        for key_hash in [h for h, (holder, _) in self._valid.items() if holder.key_id == key_id]:
            del self._valid[key_hash]


class KeyedSocket(Protocol):
    def key_lost(self, reason: str) -> None:
        """Close the socket (4403) and stop its operations, without waiting for either."""


class KeyWatch:
    """Re-checks the keys open sockets hold, all in one query per pass, and tells each socket
    whose key was revoked, or whose scopes changed, since it connected.

    A socket presents its key once, at connection_init, and may stay open for days; passes
    run every half of the authenticator's cache time, so a revoked key keeps a socket no
    longer than it keeps working over REST, and what a pass finds leaves that cache too. A
    pass costs one query for the distinct keys, whatever the number of sockets.
    """

    def __init__(self, db: Database, authenticator: Authenticator) -> None:
        self._db = db
        self._authenticator = authenticator
        self.interval = max(authenticator.cache_seconds / 2, MIN_WATCH_SECONDS)
        self._sockets: dict[str, dict[KeyedSocket, KeyHolder]] = {}

    def watch(self, socket: KeyedSocket, holder: KeyHolder) -> None:
        self._sockets.setdefault(holder.key_id, {})[socket] = holder

    def forget(self, socket: KeyedSocket, key_id: str) -> None:
        sockets = self._sockets.get(key_id, {})
        sockets.pop(socket, None)
        if not sockets:
            self._sockets.pop(key_id, None)

    async def check(self) -> None:
        """One pass: every socket whose key changed is told and forgotten."""
        if not self._sockets:
            return
        async with self._db.session() as session:
            active = await active_holders(session, key_ids=list(self._sockets))
        for key_id, sockets in list(self._sockets.items()):
            now = active.get(key_id)
            for socket, held in list(sockets.items()):
                if now != held:
                    self._authenticator.forget(key_id)
                    self.forget(socket, key_id)
                    socket.key_lost(REVOKED if now is None else SCOPES_CHANGED)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Passes in the background for as long as the block runs."""
        task = asyncio.create_task(self._run())
        try:
            yield
        finally:
            task.cancel()
            # wait(), not await: a cancellation of the caller's own must not be swallowed.
            await asyncio.wait({task})

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # the database unreachable for a moment: the next pass retries
                logger.exception("re-checking the API keys of open sockets failed")
