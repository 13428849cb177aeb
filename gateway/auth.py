"""API keys on requests: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""

from starlette.datastructures import Headers

from storage.database import Database
from storage.keys import org_for_key

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


async def authenticate(db: Database, headers: Headers) -> str:
    """The org id the request's key belongs to; raises Unauthenticated otherwise."""
    secret = key_from_headers(headers)
    async with db.session() as session:
        org_id = await org_for_key(session, secret=secret)
    if org_id is None:
        raise Unauthenticated("The API key is unknown or revoked.")
    return org_id
