"""Settings, read from EVENTS_GATEWAY_* environment variables or given directly."""

import os
from dataclasses import dataclass

from storage.database import DEFAULT_DATABASE_URL, Database

ENV_PREFIX = "EVENTS_GATEWAY_"
DATABASE_URL_VARIABLE = ENV_PREFIX + "DATABASE_URL"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{ENV_PREFIX}{name} must be a number, got {raw!r}") from None


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    return raw.lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    max_body_bytes: int = 1024 * 1024
    max_batch_body_bytes: int = 32 * 1024 * 1024
    graphql_max_depth: int = 10
    graphql_max_aliases: int = 30
    graphql_max_tokens: int = 2000
    graphiql: bool = True
    key_cache_seconds: float = 2.0
    read_pool_size: int = 2
    # PostgreSQL's pool for sessions (writes, keys, admin), per server process.
    pool_size: int = 5
    pool_max_overflow: int = 10
    pool_timeout: float = 30.0
    # Off only to measure what group commit gains (bench.writes): one transaction per request.
    group_commit: bool = True

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        """Environment first, then explicit overrides (CLI flags) that are not None."""
        values: dict[str, object] = {
            "database_url": os.environ.get(DATABASE_URL_VARIABLE) or DEFAULT_DATABASE_URL,
            "max_body_bytes": _env_int("MAX_BODY_BYTES", cls.max_body_bytes),
            "max_batch_body_bytes": _env_int("MAX_BATCH_BODY_BYTES", cls.max_batch_body_bytes),
            "graphql_max_depth": _env_int("GRAPHQL_MAX_DEPTH", cls.graphql_max_depth),
            "graphql_max_aliases": _env_int("GRAPHQL_MAX_ALIASES", cls.graphql_max_aliases),
            "graphql_max_tokens": _env_int("GRAPHQL_MAX_TOKENS", cls.graphql_max_tokens),
            "graphiql": _env_flag("GRAPHIQL", cls.graphiql),
            "key_cache_seconds": _env_float("KEY_CACHE_SECONDS", cls.key_cache_seconds),
            "read_pool_size": _env_int("READ_POOL_SIZE", cls.read_pool_size),
            "pool_size": _env_int("POOL_SIZE", cls.pool_size),
            "pool_max_overflow": _env_int("POOL_MAX_OVERFLOW", cls.pool_max_overflow),
            "pool_timeout": _env_float("POOL_TIMEOUT", cls.pool_timeout),
            "group_commit": _env_flag("GROUP_COMMIT", cls.group_commit),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]

    def database(self) -> Database:
        """A Database for `database_url` with these pool sizes (it connects when first used)."""
        return Database(
            self.database_url,
            read_pool_size=self.read_pool_size,
            group_commit=self.group_commit,
            pool_size=self.pool_size,
            pool_max_overflow=self.pool_max_overflow,
            pool_timeout=self.pool_timeout,
        )
