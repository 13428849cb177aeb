"""GET /orgs/{org_id}/events/counts: the REST twin of Organization.eventCounts."""

from starlette.requests import Request
from starlette.routing import Route

from gateway.problems import invalid
from gateway.responses import JSONResponse
from gateway.rest import authorized_org, checked_id, parse_choice, parse_window, single_values
from storage.counts import CountBy, InvalidCounts, event_counts
from storage.domain import EventFilter
from storage.keys import Scope

COUNT_PARAMETERS = ("since", "until", "by", "filter", "container_id")
REQUIRED_PARAMETERS = ("since", "until", "by")


async def org_event_counts(request: Request) -> JSONResponse:
    """The org's events in [since, until) grouped by type, status, container, hour or day."""
    db, holder = await authorized_org(request, Scope.READ)
    org_id = holder.org_id
    values = single_values(request.query_params, COUNT_PARAMETERS)
    for name in REQUIRED_PARAMETERS:
        if name not in values:
            raise invalid(name, "is required")
    window = parse_window(values)
    by = parse_choice("by", values["by"], CountBy)
    event_filter = None
    if "filter" in values:
        event_filter = parse_choice("filter", values["filter"], EventFilter)
    container_id = values.get("container_id")
    if container_id is not None:
        checked_id("container_id", container_id)
    async with db.reader() as reader:
        try:
            counts = await event_counts(
                reader,
                org_id=org_id,
                window=window,
                by=by,
                event_filter=event_filter,
                container_id=container_id,
            )
        except InvalidCounts as error:
            raise invalid(error.part, str(error)) from None
    body = {
        "by": by.value.lower(),
        "since": window.since,
        "until": window.until,
        "counts": [{"key": bucket.key, "count": bucket.count} for bucket in counts.buckets],
        "total": counts.total,
    }
    return JSONResponse(body)


routes = [Route("/orgs/{org_id}/events/counts", org_event_counts, methods=["GET"])]
