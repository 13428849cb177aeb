"""The gateway's own URLs in its answers (a page's `Link`, a trailing-slash redirect).

A request's `Host` header is whatever the client sent, so it is never copied into an answer:
with `EVENTS_GATEWAY_PUBLIC_URL` set (`https://events.example.com`, the address clients use)
these URLs are absolute on it; without, they are references relative to the request's own
address (`/orgs/acme/events?cursor=...`), which RFC 8288 and RFC 9110 allow for `Link` and
`Location`, and which a client resolves against the URL it asked.
"""

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Match, Router
from starlette.types import Receive, Scope, Send


class InvalidPublicURL(ValueError):
    """EVENTS_GATEWAY_PUBLIC_URL is not an http(s) URL with a host and nothing after its path."""


def public_base(text: str) -> str:
    """The configured public URL without a trailing slash ("" for none), or InvalidPublicURL."""
    text = text.strip().rstrip("/")
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise InvalidPublicURL(
            f"must be an http(s) URL such as https://events.example.com, not {text!r}"
        )
    return text


def own_url(base: str, path: str, query: str = "") -> str:
    """The gateway's URL for `path` and an encoded `query`: on `base`, or relative without."""
    return f"{base}{path}" + (f"?{query}" if query else "")


def request_base(request: Request) -> str:
    """The public base URL the app was configured with ("" for none)."""
    return str(getattr(request.app.state, "public_url", ""))


def redirect_slashes(router: Router, base: str) -> None:
    """Make the router's trailing-slash redirects point at `base` (or be relative), not at the
    request's Host: Starlette builds them from the Host header."""
    router.redirect_slashes = False
    not_found = router.default

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if scope["type"] == "http" and path != "/":
            other = dict(scope, path=path.rstrip("/") if path.endswith("/") else path + "/")
            if any(route.matches(other)[0] is not Match.NONE for route in router.routes):
                root = scope.get("root_path", "")
                query = scope.get("query_string", b"").decode("latin-1")
                location = own_url(base, root + other["path"], query)
                await RedirectResponse(location)(scope, receive, send)
                return
        await not_found(scope, receive, send)

    router.default = default
