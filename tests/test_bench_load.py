"""bench.load writes what the gateway's own write path would: the windows' zones included."""

import sqlite3
from datetime import datetime
from pathlib import Path

from bench.load import load
from storage.windows import HOUR, MINUTE, is_late, zone_start


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text + "+00:00")


def test_the_loaded_zones_and_late_events_are_those_storage_would_record(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    load(path, 3000, seed=3, quiet=True)
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT id, org_id, timestamp, received_at FROM events")
        zones: dict[tuple[str, int, datetime], list[int]] = {}
        late = set()
        for event_id, org_id, timestamp, received_at in rows:
            if is_late(_utc(timestamp), _utc(received_at)):
                late.add((event_id, org_id, timestamp))
                continue
            for span in (MINUTE, HOUR):
                bounds = zones.setdefault((org_id, span, zone_start(_utc(timestamp), span)), [])
                bounds.append(event_id)
        stored_zones = {
            (org_id, span, _utc(start)): (lo, hi)
            for org_id, span, start, lo, hi in connection.execute("SELECT * FROM event_zones")
        }
        stored_late = set(connection.execute("SELECT id, org_id, timestamp FROM late_events"))
    assert late and stored_late == late
    assert stored_zones == {key: (min(ids), max(ids)) for key, ids in zones.items()}
