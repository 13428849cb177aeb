"""Watching the SQL a request sends: through SQLAlchemy or on a driver reader connection."""

import re
from collections.abc import Hashable, Mapping
from typing import Any

import pytest
from sqlalchemy import event

from storage.database import Database
from storage.driver import Reader

COUNT_CALL = re.compile(r"\bcount\s*\(", re.IGNORECASE)


class SQLStatements:
    """Collects every statement sent while the block runs, in order."""

    def __init__(self, db: Database) -> None:
        self.engine = db.engine.sync_engine
        self.statements: list[str] = []
        self._patch = pytest.MonkeyPatch()

    @property
    def counts(self) -> list[str]:
        """The statements that compute a COUNT."""
        return [statement for statement in self.statements if COUNT_CALL.search(statement)]

    def _seen(self, _connection: object, _cursor: object, statement: str, *_rest: object) -> None:
        self.statements.append(statement)

    def __enter__(self) -> "SQLStatements":
        event.listen(self.engine, "before_cursor_execute", self._seen)
        original = Reader.fetch_raw
        statements = self.statements

        async def recording_fetch(
            reader: Reader, key: Hashable, build: Any, values: Mapping[str, Any]
        ) -> Any:
            rows = await original(reader, key, build, values)
            statements.append(reader.compiled(key, build).sql)
            return rows

        # Reader.fetch reads through fetch_raw too.
        self._patch.setattr(Reader, "fetch_raw", recording_fetch)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)
        self._patch.undo()
