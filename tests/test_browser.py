"""GraphiQL at /graphql and the REST docs at /docs, in headless Chromium, with no CDN.

A real `events-gateway serve` process on 127.0.0.1 serves a temporary SQLite file and the
pinned UI files from a folder that `events-gateway assets fetch` filled (once, into the
git-ignored .cache/ui-assets, so reruns need no network). The browser may reach 127.0.0.1
only: every other request is aborted and listed, and the tests assert that list is empty.
Screenshots go to test-artifacts/. Skipped without the system's Chromium or the files.
"""

import asyncio
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.openapi import openapi_document
from gateway.persisted import PersistedOperations
from gateway.ui import (
    GRAPHIQL,
    HEADERS_HINT,
    AssetFetchError,
    UIAssets,
    docs_page,
    fetch_assets,
    graphiql_page,
)
from storage.database import Database
from tests.factories import make_events, make_org
from tests.servers import free_port, server_process

playwright_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parent.parent
ASSETS_CACHE = ROOT / ".cache" / "ui-assets"
ARTIFACTS = ROOT / "test-artifacts"
START_TIMEOUT = 30.0
FAILED = ["vault-broken-1", "vault-broken-2", "vault-broken-3"]


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


@dataclass
class Server:
    base: str
    key: str


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _chromium()
    if path is None:
        pytest.skip("no Chromium: install Debian's `chromium` package (/usr/bin/chromium)")
    return path


@pytest.fixture(scope="module")
def ui_assets() -> Path:
    try:
        fetch_assets(ASSETS_CACHE, say=lambda _line: None)
    except AssetFetchError as error:
        pytest.skip(f"the UI files could not be fetched from the npm registry: {error}")
    return ASSETS_CACHE


async def _seed(url: str) -> str:
    db = Database(url)
    try:
        await db.create_schema()
        key = await make_org(db, "acme")
        specs = [("vault-fine", {"status": "SUCCESS", "actor": "fine-actor"})]
        specs += [(container, {"status": "FAILURE"}) for container in FAILED]
        specs += [("vault-fine", {"event_type": "BLOCK", "status": "SUCCESS"})]
        await make_events(db, "acme", specs)
    finally:
        await db.dispose()
    return key


@pytest.fixture(scope="module")
def server(ui_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('browser') / 'events.db'}"
    key = asyncio.run(_seed(url))
    port = free_port()
    env = {
        **os.environ,
        "EVENTS_GATEWAY_DATABASE_URL": url,
        "EVENTS_GATEWAY_UI_ASSETS": str(ui_assets),
        "EVENTS_GATEWAY_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
    with server_process(command, port, env=env, start_timeout=START_TIMEOUT) as base:
        yield Server(base, key)


@pytest.fixture
def page(chromium: str) -> Iterator[tuple[playwright_api.Page, list[str]]]:
    """A page that reaches 127.0.0.1 only; the list collects every other URL it asked for."""
    blocked: list[str] = []

    def local_only(route: playwright_api.Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.route("**/*", local_only)
            yield page, blocked
        finally:
            browser.close()


def _replace_editor_text(page: playwright_api.Page, selector: str, text: str) -> None:
    page.locator(selector).click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    # Inserted as typed text without key events, so the editor's bracket closing stays out.
    page.keyboard.insert_text(text)


def test_graphiql_runs_a_query_with_a_key_from_the_headers_pane(
    server: Server, page: tuple[playwright_api.Page, list[str]]
) -> None:
    browser_page, blocked = page
    response = browser_page.goto(server.base + "/graphql")
    assert response is not None and response.status == 200
    expect = playwright_api.expect

    tabs = browser_page.locator(".graphiql-tab")
    expect(tabs).to_have_count(len(list(PersistedOperations.from_folder())))
    expect(tabs.filter(has_text="FailedEvents")).to_have_count(1)
    expect(tabs.filter(has_text="LiveContainerEvents")).to_have_count(1)
    headers_editor = ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror"
    expect(browser_page.locator(headers_editor)).to_contain_text(HEADERS_HINT)

    _replace_editor_text(
        browser_page, headers_editor, f'{{"Authorization": "Bearer {server.key}"}}'
    )
    _replace_editor_text(
        browser_page,
        ".graphiql-query-editor .CodeMirror",
        'query Failures { org(id: "acme") '
        "{ events(filter: FAIL) { nodes { status container { id } } } } }",
    )
    # GraphiQL names the tab after the operation once it has read the edit.
    playwright_api.expect(browser_page.locator(".graphiql-tab-active")).to_contain_text("Failures")
    browser_page.locator(".graphiql-execute-button").click()

    result = browser_page.locator(".result-window")
    for container in FAILED:
        expect(result).to_contain_text(container)
    assert "vault-fine" not in result.inner_text()
    assert "SUCCESS" not in result.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    browser_page.screenshot(path=ARTIFACTS / "graphiql.png")
    assert blocked == []


def test_docs_list_every_rest_route(
    server: Server, page: tuple[playwright_api.Page, list[str]]
) -> None:
    browser_page, blocked = page
    response = browser_page.goto(server.base + "/docs")
    assert response is not None and response.status == 200
    expect = playwright_api.expect

    paths = openapi_document()["paths"]
    for path, operations in paths.items():
        for method in operations.keys() & {"get", "post", "put", "patch", "delete"}:
            operation = browser_page.locator(
                f'.opblock-{method} .opblock-summary-path[data-path="{path}"]'
            )
            expect(operation).to_have_count(1)
    ARTIFACTS.mkdir(exist_ok=True)
    browser_page.screenshot(path=ARTIFACTS / "docs.png", full_page=True)
    assert blocked == []


def test_pages_load_their_files_from_the_cdn_unless_told_otherwise() -> None:
    on_cdn = UIAssets("")
    page = graphiql_page(on_cdn, PersistedOperations.from_folder())
    assert f'src="https://unpkg.com/graphiql@{GRAPHIQL.version}/graphiql.min.js"' in page
    assert "/ui-assets/" not in page
    mirrored = docs_page(UIAssets("https://mirror.example/npm/"))
    assert 'src="https://mirror.example/npm/swagger-ui-dist@' in mirrored
    assert "unpkg.com" not in mirrored


def test_a_folder_without_the_files_is_refused_with_the_command_to_fill_it(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="events-gateway assets fetch --dir"):
        UIAssets.configured(str(tmp_path))


def test_fetch_refuses_a_tarball_that_does_not_match_its_integrity(tmp_path: Path) -> None:
    def registry(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(".tgz"):
            return httpx.Response(200, content=b"not the tarball the registry vouched for")
        tarball = f"https://registry.example{request.url.path}.tgz"
        return httpx.Response(200, json={"dist": {"tarball": tarball, "integrity": "sha512-AAAA"}})

    client = httpx.Client(transport=httpx.MockTransport(registry))
    with pytest.raises(AssetFetchError, match="sha512 integrity"):
        fetch_assets(tmp_path, registry="https://registry.example", client=client)
    assert list(tmp_path.iterdir()) == []
