"""Watching the SQL a request sends, to prove what it does not compute."""

import re

from sqlalchemy import event

from storage.database import Database

COUNT_CALL = re.compile(r"\bcount\s*\(", re.IGNORECASE)


class CountStatements:
    """Collects the COUNT statements the engine sends while it is listening.

    Only statements that pass through SQLAlchemy are seen, which is where storage/counts.py
    sends its own.
    """

    def __init__(self, db: Database) -> None:
        self.engine = db.engine.sync_engine
        self.statements: list[str] = []

    def _seen(self, _connection: object, _cursor: object, statement: str, *_rest: object) -> None:
        if COUNT_CALL.search(statement):
            self.statements.append(statement)

    def __enter__(self) -> "CountStatements":
        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)
