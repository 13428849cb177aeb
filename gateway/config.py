"""Settings, read from EVENTS_GATEWAY_* environment variables or given directly."""

import os
from collections.abc import Callable
from dataclasses import dataclass

from gateway.ratelimit import DEFAULT_KEY_PREFIX, check_storage_uri, parse_rate
from gateway.urls import public_base
from storage.database import DEFAULT_DATABASE_URL, Database

ENV_PREFIX = "EVENTS_GATEWAY_"
DATABASE_URL_VARIABLE = ENV_PREFIX + "DATABASE_URL"


def _env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SystemExit(f"{ENV_PREFIX}{name} must be at least {minimum}, got {raw!r}")
    return value


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


def _env_checked(name: str, default: str, check: Callable[[str], object]) -> str:
    """The variable as given, once `check` accepts it (its ValueError stops the start)."""
    raw = os.environ.get(ENV_PREFIX + name, "").strip() or default
    try:
        if raw:
            check(raw)
    except ValueError as error:
        raise SystemExit(f"{ENV_PREFIX}{name} {error}") from None
    return raw


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    max_body_bytes: int = 1024 * 1024
    max_batch_body_bytes: int = 32 * 1024 * 1024
    graphql_max_depth: int = 10
    graphql_max_aliases: int = 30
    graphql_max_tokens: int = 2000
    graphql_introspection: bool = True
    # Read queries answered by compiled plans (schema/compiled.py); off: graphql-core runs all.
    graphql_compiled: bool = True
    # Only the operations stored in queries/ are executed (gateway/persisted.py).
    graphql_persisted_only: bool = False
    graphiql: bool = True
    # Where GraphiQL's and /docs' files come from (gateway/ui.py): "" for the public CDN, a
    # mirror's base URL, or a folder filled by `events-gateway assets fetch`.
    ui_assets: str = ""
    key_cache_seconds: float = 2.0
    read_pool_size: int = 2
    # PostgreSQL's pool for sessions (writes, keys, admin), per server process.
    pool_size: int = 5
    pool_max_overflow: int = 10
    pool_timeout: float = 30.0
    # Off only to measure what group commit gains (bench.writes): one transaction per request.
    group_commit: bool = True
    # Logs (gateway/logs.py): `json` lines or `text`, from this level up.
    log_format: str = "json"
    log_level: str = "info"
    # Transport limits (README, "Transport limits"); all but the first are uvicorn's, for `serve`.
    request_timeout: float = 30.0
    max_header_bytes: int = 16 * 1024
    keep_alive_timeout: int = 5
    max_connections: int = 1000
    http_parser: str = "h11"
    # Per-key rate limit (gateway/ratelimit.py): a `limits` rate such as `600/minute`, or ""
    # for none; counted in this process (`memory://`) or shared through `redis://host:port`.
    rate_limit: str = ""
    rate_limit_storage: str = "memory://"
    rate_limit_key_prefix: str = DEFAULT_KEY_PREFIX
    # The address clients reach the gateway at (gateway/urls.py): absolute `Link` and redirect
    # URLs are built on it; "" makes them relative, and never from the request's Host header.
    public_url: str = ""
    # What the subscription tails of one process hold in memory, all orgs together
    # (storage/broker.py): past it the oldest held events are dropped and re-read when needed.
    subscription_memory_mb: int = 64

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
            "graphql_introspection": _env_flag("GRAPHQL_INTROSPECTION", cls.graphql_introspection),
            "graphql_compiled": _env_flag("GRAPHQL_COMPILED", cls.graphql_compiled),
            "graphql_persisted_only": _env_flag(
                "GRAPHQL_PERSISTED_ONLY", cls.graphql_persisted_only
            ),
            "graphiql": _env_flag("GRAPHIQL", cls.graphiql),
            "ui_assets": os.environ.get(ENV_PREFIX + "UI_ASSETS", cls.ui_assets).strip(),
            "key_cache_seconds": _env_float("KEY_CACHE_SECONDS", cls.key_cache_seconds),
            "read_pool_size": _env_int("READ_POOL_SIZE", cls.read_pool_size),
            "pool_size": _env_int("POOL_SIZE", cls.pool_size),
            "pool_max_overflow": _env_int("POOL_MAX_OVERFLOW", cls.pool_max_overflow),
            "pool_timeout": _env_float("POOL_TIMEOUT", cls.pool_timeout),
            "group_commit": _env_flag("GROUP_COMMIT", cls.group_commit),
            "log_format": (os.environ.get(ENV_PREFIX + "LOG_FORMAT") or cls.log_format).lower(),
            "log_level": (os.environ.get(ENV_PREFIX + "LOG_LEVEL") or cls.log_level).lower(),
            "request_timeout": _env_float("REQUEST_TIMEOUT", cls.request_timeout),
            "max_header_bytes": _env_int("MAX_HEADER_BYTES", cls.max_header_bytes),
            "keep_alive_timeout": _env_int("KEEP_ALIVE_TIMEOUT", cls.keep_alive_timeout),
            "max_connections": _env_int("MAX_CONNECTIONS", cls.max_connections),
            "http_parser": (os.environ.get(ENV_PREFIX + "HTTP_PARSER") or cls.http_parser).lower(),
            "rate_limit": _env_checked("RATE_LIMIT", cls.rate_limit, parse_rate),
            "rate_limit_storage": _env_checked(
                "RATE_LIMIT_STORAGE", cls.rate_limit_storage, check_storage_uri
            ),
            "rate_limit_key_prefix": os.environ.get(ENV_PREFIX + "RATE_LIMIT_KEY_PREFIX")
            or cls.rate_limit_key_prefix,
            "public_url": _env_checked("PUBLIC_URL", cls.public_url, public_base),
            "subscription_memory_mb": _env_int(
                "SUBSCRIPTION_MEMORY_MB", cls.subscription_memory_mb, minimum=0
            ),
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
