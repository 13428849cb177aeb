"""Time-window pages whose cost does not grow with the table, nor with the window.

A `since`/`until` page wants the newest (or oldest) ids among an org's events stamped in the
window. An index on the timestamp finds those events, but in timestamp order: putting them in
id order means reading every one, and a day holds ~170k events of a busy org. Events are stored
soon after they happen, though, so the ids of one minute's events lie close together:

- `event_zones` keeps, per org and per minute and hour of event time, the lowest and highest
  id stamped in it. The zones a window touches bound its ids to [lo, hi]; a page walks its read
  path's own id-ordered index inside that range, checks each row's timestamp, and stops after
  one page. What it reads beyond the window's edges is about a minute of events.
- An event stamped more than LATE_AFTER away from its arrival would stretch its zone over
  everything received in between, so it stays out of the zones and is listed in `late_events`
  (org, timestamp, id), which a page reads beside the walk. Backfilled history therefore costs
  what the window holds, as it would through a plain time index.

Both are written in the transaction that stores the events, so no page can miss one.
"""

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    CTE,
    Integer,
    bindparam,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from storage.driver import execute_many
from storage.models import UTCDateTime, event_zones, events, late_events
from storage.sql import least_and_greatest

LATE_AFTER = timedelta(minutes=10)
MINUTE = 60
HOUR = 3600
_ABOVE_EVERY_ID = literal(2**63 - 1, events.c.id.type)
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)
# A window's zones: the minutes before its first whole hour, its whole hours, the minutes after.
_RANGES = (("lead", MINUTE), ("hours", HOUR), ("trail", MINUTE))


def zone_start(moment: datetime, span: int) -> datetime:
    moment = moment.replace(second=0, microsecond=0)
    return moment.replace(minute=0) if span == HOUR else moment


def _later(moment: datetime, step: timedelta) -> datetime:
    """`step` after `moment`; in the calendar's last minute or hour, its last moment instead."""
    return _LATEST if _LATEST - moment < step else moment + step


def is_late(timestamp: datetime, received_at: datetime) -> bool:
    return abs(received_at - timestamp) > LATE_AFTER


def zone_parameters(since: datetime | None, until: datetime | None) -> dict[str, datetime]:
    """Where each of the window's three zone ranges starts and ends (an empty one starts at its
    end); an open end of the window reaches the earliest or latest zone."""
    since = _EARLIEST if since is None else since
    until = _LATEST if until is None else until
    first_hour = zone_start(since, HOUR)
    if first_hour < since:
        first_hour = _later(first_hour, timedelta(hours=1))
    last_hour = zone_start(until, HOUR)
    lead_end = min(first_hour, until)
    if last_hour < first_hour:  # the window lies within one hour: its minutes are enough
        last_hour = first_hour
    return {
        "lead_from": zone_start(since, MINUTE),
        "lead_to": lead_end,
        "hours_from": first_hour,
        "hours_to": last_hour,
        "trail_from": max(last_hour, lead_end),
        "trail_to": until,
    }


def zone_range() -> CTE:
    """The lowest and highest id (`low`, `high`) of the non-late events in the zones the window
    touches; an empty range (`low` above every id, `high` 0) when it touches none. One pass over
    the zones, however often a statement refers to it.

    Never NULL: PostgreSQL's LEAST and GREATEST skip a NULL where SQLite's answer NULL, and a
    page combines these bounds with its cursor's.
    """
    parts = [
        select(
            func.min(event_zones.c.min_id).label("low"),
            func.max(event_zones.c.max_id).label("high"),
        ).where(
            event_zones.c.org_id == bindparam("org_id"),
            event_zones.c.span_seconds == literal(span, Integer()),
            event_zones.c.start >= bindparam(f"{name}_from", type_=UTCDateTime),
            event_zones.c.start < bindparam(f"{name}_to", type_=UTCDateTime),
        )
        for name, span in _RANGES
    ]
    bounds = union_all(*parts).subquery()
    return select(
        func.coalesce(func.min(bounds.c.low), _ABOVE_EVERY_ID).label("low"),
        func.coalesce(func.max(bounds.c.high), 0).label("high"),
    ).cte("zone_range")


LATE_COLUMNS = tuple(late_events.c.keys())


async def record_windows(
    session: AsyncSession, *, org_id: str, stored: Iterable[Mapping[str, Any]]
) -> None:
    """Widen the zones of newly stored events, or list them late.

    Runs in the storing transaction. Zones are written in key order, so two transactions
    widening the same zones cannot deadlock.
    """
    minutes: dict[datetime, list[int]] = {}  # minute start: [lowest id, highest id]
    late: list[dict[str, Any]] = []
    # A batch's events mostly share a few minutes: the minute is worked out once per run of
    # events in it, not once per event.
    minute = minute_end = _EARLIEST
    bounds: list[int] = []
    for row in stored:
        event_id, timestamp = row["id"], row["timestamp"]
        if is_late(timestamp, row["received_at"]):
            late.append({column: row[column] for column in LATE_COLUMNS})
            continue
        if not minute <= timestamp < minute_end:
            minute = zone_start(timestamp, MINUTE)
            minute_end = _later(minute, timedelta(minutes=1))
            bounds = minutes.setdefault(minute, [event_id, event_id])
        if event_id < bounds[0]:
            bounds[0] = event_id
        elif event_id > bounds[1]:
            bounds[1] = event_id
    zones = {(MINUTE, start): (lo, hi) for start, (lo, hi) in minutes.items()}
    for start, (lo, hi) in minutes.items():
        hour = (HOUR, zone_start(start, HOUR))
        known = zones.get(hour)
        zones[hour] = (lo, hi) if known is None else (min(known[0], lo), max(known[1], hi))
    if late:
        await execute_many(session, _INSERT_LATE, late)
    if zones:
        rows = [
            {"org_id": org_id, "span_seconds": span, "start": start, "min_id": lo, "max_id": hi}
            for (span, start), (lo, hi) in sorted(zones.items())
        ]
        await execute_many(session, _widen_zones(session.get_bind().dialect.name), rows)


_INSERT_LATE = late_events.insert()


@cache
def _widen_zones(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(event_zones)
    lowest, highest = least_and_greatest(dialect)
    return statement.on_conflict_do_update(
        index_elements=[event_zones.c.org_id, event_zones.c.span_seconds, event_zones.c.start],
        set_={
            "min_id": lowest(event_zones.c.min_id, statement.excluded.min_id),
            "max_id": highest(event_zones.c.max_id, statement.excluded.max_id),
        },
    )
