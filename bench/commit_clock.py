"""The gateway with a clock on its commits, for bench.subscriptions to measure from.

    uvicorn --factory bench.commit_clock:create_app

The app of gateway.app:create_app, plus a hook on the event writer's commits (the one
storage.broker hears them by, called as soon as a group's commit returns) that notes the
wall-clock time of each committed event, and `GET /_bench/commits` answering them as
{"ids": [...], "times": [...]}. For benchmarks on loopback only: the route has no key.
"""

import time
from array import array

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import app as gateway
from gateway.config import Settings
from storage.events import EventRecord


def create_app() -> Starlette:
    settings = Settings.from_env()
    db = settings.database()
    app = gateway.create_app(settings, db=db)
    ids, times = array("q"), array("d")

    def committed(_org_id: str, rows: list[EventRecord]) -> None:
        now = time.time()
        for row in rows:
            ids.append(row["id"])
            times.append(now)

    async def commits(_request: Request) -> Response:
        body = {"ids": ids.tolist(), "times": times.tolist()}
        return Response(orjson.dumps(body), media_type="application/json")

    db.writer.on_commit.append(committed)
    app.router.routes.insert(0, Route("/_bench/commits", commits))
    return app
