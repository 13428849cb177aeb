"""The browser pages: GraphiQL at /graphql and the REST docs (Swagger UI) at /docs.

Their JavaScript and CSS come from one place, EVENTS_GATEWAY_UI_ASSETS: the public CDN by
default, an internal mirror with the CDN's layout (`<base>/<package>@<version>/<file>`), or a
local folder that `events-gateway assets fetch` fills from the npm registry and the app serves
at /ui-assets/. Versions and file hashes are pinned here, in PACKAGES, and nowhere else.
"""

import base64
import hashlib
import html
import io
import json
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from graphql import NonNullTypeNode, OperationDefinitionNode, parse, value_from_ast_untyped
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.persisted import StoredOperation

DEFAULT_CDN = "https://unpkg.com"
NPM_REGISTRY = "https://registry.npmjs.org"
LOCAL_PATH = "/ui-assets"
HEADERS_HINT = '{"Authorization": "Bearer <your API key>"}'


@dataclass(frozen=True)
class Package:
    """An npm package pinned to a version, with the files the pages load and their SRI hashes."""

    name: str
    version: str
    files: dict[str, str]

    @property
    def folder(self) -> str:
        return f"{self.name}@{self.version}"


# The versions Strawberry's own GraphiQL page loads; the hashes double as the pages'
# Subresource Integrity, so a mirror or CDN serving other bytes is refused by the browser.
REACT = Package(
    "react",
    "18.2.0",
    {
        "umd/react.production.min.js": (
            "sha384-tMH8h3BGESGckSAVGZ82T9n90ztNXxvdwvdM6UoR56cYcf+0iGXBliJ29D+wZ/x8"
        )
    },
)
REACT_DOM = Package(
    "react-dom",
    "18.2.0",
    {
        "umd/react-dom.production.min.js": (
            "sha384-bm7MnzvK++ykSwVJ2tynSE5TRdN+xL418osEVF2DE/L/gfWHj91J2Sphe582B1Bh"
        )
    },
)
GRAPHIQL = Package(
    "graphiql",
    "3.8.3",
    {
        "graphiql.min.js": (
            "sha384-HbRVEFG0JGJZeAHCJ9Xm2+tpknBQ7QZmNlO/DgZtkZ0aJSypT96YYGRNod99l9Ie"
        ),
        "graphiql.min.css": (
            "sha384-Mq3vbRBY71jfjQAt/DcjxUIYY33ksal4cgdRt9U/hNPvHBCaT2JfJ/PTRiPKf0aM"
        ),
    },
)
SWAGGER_UI = Package(
    "swagger-ui-dist",
    "5.35.0",
    {
        "swagger-ui-bundle.js": (
            "sha384-gjRm0bEPMeTmMh5jT2cHccIwCUZSTd8YC+j0d0sXw0MdGEfScduGpSyF3ZSSLkX9"
        ),
        "swagger-ui.css": "sha384-WlYgdmXYOOBWL5apwjDEZwN+U3HmXSSu5R6V5aGxEcf7z+KuRNwBhoxKVN1i3D5I",
    },
)
PACKAGES = (REACT, REACT_DOM, GRAPHIQL, SWAGGER_UI)


class AssetFetchError(Exception):
    """The registry could not be reached, or sent something other than the pinned files."""


def _sri(algorithm: str, data: bytes) -> str:
    return f"{algorithm}-{base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


class UIAssets:
    """Where the pages load their files from: a URL base, or a local folder served by the app."""

    def __init__(self, location: str = "") -> None:
        location = location.strip()
        self.folder: Path | None = None
        if not location:
            self.base = DEFAULT_CDN
        elif location.startswith(("http://", "https://")):
            self.base = location.rstrip("/")
        else:
            self.folder = Path(location).resolve()
            self.base = LOCAL_PATH
            missing = [path for path in self.local_files() if not path.is_file()]
            if missing:
                raise ValueError(
                    f"names the folder {self.folder}, which lacks {missing[0].name} and "
                    f"{len(missing) - 1} more file(s): run `events-gateway assets fetch "
                    f"--dir {self.folder}`"
                )

    @classmethod
    def configured(cls, location: str) -> "UIAssets":
        """The location EVENTS_GATEWAY_UI_ASSETS names; a folder lacking files stops the start."""
        try:
            return cls(location)
        except ValueError as error:
            raise SystemExit(f"EVENTS_GATEWAY_UI_ASSETS {error}") from None

    def local_files(self) -> list[Path]:
        assert self.folder is not None
        return [
            self.folder / package.folder / file for package in PACKAGES for file in package.files
        ]

    def url(self, package: Package, file: str) -> str:
        return f"{self.base}/{package.folder}/{file}"

    def script(self, package: Package, file: str) -> str:
        return (
            f'<script src="{html.escape(self.url(package, file))}" '
            f'integrity="{package.files[file]}" crossorigin="anonymous"></script>'
        )

    def stylesheet(self, package: Package, file: str) -> str:
        return (
            f'<link rel="stylesheet" href="{html.escape(self.url(package, file))}" '
            f'integrity="{package.files[file]}" crossorigin="anonymous">'
        )

    def routes(self) -> list[BaseRoute]:
        """/docs, and /ui-assets/ when the files are in a local folder."""
        page = docs_page(self)

        async def docs(_request: Request) -> HTMLResponse:
            return HTMLResponse(page)

        routes: list[BaseRoute] = [Route("/docs", docs, methods=["GET"])]
        if self.folder is not None:
            routes.append(Mount(LOCAL_PATH, app=StaticFiles(directory=self.folder)))
        return routes


def _script_json(value: object) -> str:
    """JSON safe inside a <script> element: no `</script>` or `<!--` can end it early."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")


def _example_variables(operation: StoredOperation) -> str | None:
    """The operation's variables as JSON: declared defaults, and null for required ones to fill."""
    definition = next(
        node
        for node in parse(operation.text).definitions
        if isinstance(node, OperationDefinitionNode)
    )
    variables: dict[str, Any] = {}
    for variable in definition.variable_definitions or ():
        name = variable.variable.name.value
        if variable.default_value is not None:
            variables[name] = value_from_ast_untyped(variable.default_value)
        elif isinstance(variable.type, NonNullTypeNode):
            variables[name] = None
    return json.dumps(variables, indent=2) if variables else None


def graphiql_page(assets: UIAssets, operations: Iterable[StoredOperation]) -> str:
    """GraphiQL with a tab per stored operation and the headers pane open on the key's hint."""
    tabs = []
    for operation in operations:
        tab = {"query": operation.text, "headers": HEADERS_HINT}
        variables = _example_variables(operation)
        if variables is not None:
            tab["variables"] = variables
        tabs.append(tab)
    return GRAPHIQL_TEMPLATE.format(
        assets="\n    ".join(
            [
                assets.stylesheet(GRAPHIQL, "graphiql.min.css"),
                assets.script(REACT, "umd/react.production.min.js"),
                assets.script(REACT_DOM, "umd/react-dom.production.min.js"),
                assets.script(GRAPHIQL, "graphiql.min.js"),
            ]
        ),
        tabs=_script_json(tabs),
        headers=_script_json(HEADERS_HINT),
    )


def docs_page(assets: UIAssets) -> str:
    """Swagger UI over /openapi.json."""
    return DOCS_TEMPLATE.format(
        assets="\n    ".join(
            [
                assets.stylesheet(SWAGGER_UI, "swagger-ui.css"),
                assets.script(SWAGGER_UI, "swagger-ui-bundle.js"),
            ]
        )
    )


def fetch_assets(
    folder: Path,
    *,
    registry: str = NPM_REGISTRY,
    client: httpx.Client | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """Download the pinned files into `folder`, each checked twice: the tarball against the
    registry's sha512 integrity, each file against its pinned hash. Returns the files written;
    files already present with the pinned hash are kept as they are."""
    own_client = client is None
    client = client or httpx.Client(timeout=60, follow_redirects=True)
    written = 0
    try:
        for package in PACKAGES:
            targets = {file: folder / package.folder / file for file in package.files}
            if all(_holds(path, package.files[file]) for file, path in targets.items()):
                continue
            contents = _package_files(client, registry, package)
            for file, path in targets.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(path.name + ".partial")
                partial.write_bytes(contents[file])
                partial.replace(path)
                written += 1
            say(f"{package.folder}: {', '.join(package.files)}")
    except httpx.HTTPError as error:
        raise AssetFetchError(f"{registry}: {error}") from None
    except OSError as error:
        raise AssetFetchError(f"{folder}: {error.strerror or error}") from None
    finally:
        if own_client:
            client.close()
    return written


def _holds(path: Path, integrity: str) -> bool:
    return path.is_file() and _sri("sha384", path.read_bytes()) == integrity


def _package_files(client: httpx.Client, registry: str, package: Package) -> dict[str, bytes]:
    metadata = client.get(f"{registry}/{package.name}/{package.version}")
    metadata.raise_for_status()
    dist = metadata.json()["dist"]
    tarball = client.get(dist["tarball"])
    tarball.raise_for_status()
    if _sri("sha512", tarball.content) != dist["integrity"]:
        raise AssetFetchError(f"{package.folder}: the tarball does not match its sha512 integrity")
    contents = {}
    with tarfile.open(fileobj=io.BytesIO(tarball.content), mode="r:gz") as archive:
        for file, integrity in package.files.items():
            member = archive.extractfile(f"package/{file}")
            data = member.read() if member is not None else b""
            if _sri("sha384", data) != integrity:
                raise AssetFetchError(f"{package.folder}/{file} does not match its pinned hash")
            contents[file] = data
    return contents


GRAPHIQL_TEMPLATE = """<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>Events Gateway · GraphiQL</title>
    <style>
      body {{ margin: 0; }}
      #graphiql {{ height: 100vh; }}
    </style>
    {assets}
  </head>
  <body>
    <div id="graphiql">Loading…</div>
    <script>
      const url = window.location.href.split("?")[0];
      const subscriptionUrl = url.replace(/^http/, "ws");
      // The headers pane's headers go with each request, and in connection_init over WebSocket.
      const fetcher = GraphiQL.createFetcher({{ url, subscriptionUrl }});
      const root = ReactDOM.createRoot(document.getElementById("graphiql"));
      root.render(
        React.createElement(GraphiQL, {{
          fetcher,
          defaultTabs: {tabs},
          defaultHeaders: {headers},
          defaultEditorToolsVisibility: "headers",
          isHeadersEditorEnabled: true,
          shouldPersistHeaders: false,
          inputValueDeprecation: true,
        }}),
      );
    </script>
  </body>
</html>
"""

DOCS_TEMPLATE = """<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>Events Gateway · REST API</title>
    {assets}
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script>
      SwaggerUIBundle({{
        url: new URL("/openapi.json", window.location.href).href,
        dom_id: "#swagger-ui",
        presets: [SwaggerUIBundle.presets.apis],
        layout: "BaseLayout",
        validatorUrl: null,
        deepLinking: true,
      }});
    </script>
  </body>
</html>
"""
