"""schema/schema.graphql is the schema the code builds: every change to it shows in review."""

import subprocess
import sys
from pathlib import Path

from schema import schema_sdl

ROOT = Path(__file__).resolve().parent.parent
SDL = ROOT / "schema" / "schema.graphql"
REGENERATE = (
    "events-gateway schema > schema/schema.graphql (and note breaking changes in CHANGELOG.md)"
)


def test_the_committed_sdl_is_the_schema_the_code_builds() -> None:
    assert SDL.read_text() == schema_sdl(), f"schema/schema.graphql is stale: run {REGENERATE}"


def test_events_gateway_schema_prints_it() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "gateway", "schema"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert printed == SDL.read_text()
    assert "type Query {" in printed and "type Subscription {" in printed
