"""SQL spelled differently by the two dialects."""

from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, func

SQLFunction = Callable[..., ColumnElement[Any]]


def least_and_greatest(dialect_name: str) -> tuple[SQLFunction, SQLFunction]:
    """The smaller and the larger of several values: PostgreSQL's least() and greatest(),
    SQLite's scalar (many-argument) min() and max()."""
    if dialect_name == "postgresql":
        return func.least, func.greatest
    return func.min, func.max
