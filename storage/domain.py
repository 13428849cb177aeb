"""The event model's vocabulary and input rules, shared by REST, GraphQL and the CLI."""

import asyncio
import codecs
import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ID_RULE = "must be 1-128 characters of A-Z a-z 0-9 . _ : -"
# RFC 3339 date-time (section 5.6), the offset optional here so a naive time gets its own message.
# fromisoformat alone would also take ISO 8601 forms such as week dates and comma fractions.
RFC3339_PATTERN = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?", re.ASCII
)
MAX_ACTOR_LENGTH = 256
MAX_DETAILS_BYTES = 16 * 1024
MAX_BATCH_EVENTS = 10_000
# The integers JSON details may hold: what orjson (and so storage) reads and writes exactly.
SMALLEST_INTEGER, LARGEST_INTEGER = -(2**63), 2**64 - 1
# A number this many digits long may lie outside them. Found by turning every digit into "0"
# and everything else into " ", then one substring search: C speed, where a regular
# expression took 480 ms over a 29 MiB batch.
_LONG_NUMBER = b"0" * 19
_DIGITS_ONLY = bytes(ord("0") if 0x30 <= byte <= 0x39 else ord(" ") for byte in range(256))


def load_json(raw: bytes | str) -> Any:
    """Parse a JSON body as orjson does (refusing NaN and infinities with JSONDecodeError), but
    with integers beyond 64 bits kept exact, where orjson would silently make them floats, so
    that validation can refuse them."""
    value = orjson.loads(raw)
    text = raw.encode() if isinstance(raw, str) else raw
    if text.translate(_DIGITS_ONLY).find(_LONG_NUMBER) >= 0:
        # Rare (a 19-digit run, in a string or a number): the text is valid JSON already.
        return json.loads(raw)
    return value


# Above this size a JSON array body is parsed an item at a time, letting the event loop turn
# between slices: orjson parses a 29 MiB batch in one call of 60-80 ms (173 ms on a busy
# machine), during which the whole process waits.
SLICED_ABOVE_BYTES = 1024 * 1024
_SLICE_BYTES = 1024 * 1024
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, not str.isspace's
_DECODER = json.JSONDecoder()


class _NotPlain(Exception):
    """json met what orjson may read differently (NaN, Infinity, a float beyond double)."""


def _refuse_constant(_name: str) -> Any:
    raise _NotPlain


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotPlain
    return value


# Accepts exactly what orjson does for what it accepts; anything else goes to orjson.
_PLAIN_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


async def load_json_array(raw: bytes) -> Any:
    """load_json's answer for a body, without holding the event loop over a large array.

    A large body is decoded a slice at a time, then each item of a top-level array is read by
    the standard library's scanner, which starts anywhere in a string and keeps integers
    exact. Where that scanner and orjson may disagree (NaN and infinities, which orjson
    refuses, a float beyond double, an escaped surrogate, nesting past Python's recursion
    limit), the item's own text is given to load_json, so the outcome is load_json's for
    every input: the same values, or JSONDecodeError where it would raise one.
    """
    if len(raw) <= SLICED_ABOVE_BYTES:
        return load_json(raw)
    try:
        text = await _decoded(raw)
    except UnicodeDecodeError:
        return load_json(raw)  # orjson's own error, with its position
    index = _WHITESPACE.match(text).end()  # type: ignore[union-attr]
    if not text.startswith("[", index):
        return load_json(raw)  # not an array: refused as a batch however it parses
    items: list[Any] = []
    index = _WHITESPACE.match(text, index + 1).end()  # type: ignore[union-attr]
    if text.startswith("]", index):
        return _ended(text, index + 1, raw, items)
    taken = 0
    while True:
        start = index
        try:
            item, index = _PLAIN_DECODER.raw_decode(text, start)
        except (_NotPlain, RecursionError, json.JSONDecodeError):
            end = _item_end(text, start)
            if end is None:
                return load_json(raw)  # orjson's answer for the whole body
            item, index = load_json(text[start:end]), end
        else:
            if _SURROGATE_ESCAPE.search(text, start, index):
                item = load_json(text[start:index])  # orjson refuses a lone surrogate
        items.append(item)
        taken += index - start
        if taken > _SLICE_BYTES:
            taken = 0
            await asyncio.sleep(0)
        index = _WHITESPACE.match(text, index).end()  # type: ignore[union-attr]
        if text.startswith("]", index):
            return _ended(text, index + 1, raw, items)
        if not text.startswith(",", index):
            return load_json(raw)  # orjson's own error, with its position
        index = _WHITESPACE.match(text, index + 1).end()  # type: ignore[union-attr]


async def _decoded(raw: bytes) -> str:
    """The UTF-8 text of `raw`, decoded a slice at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    parts = []
    for start in range(0, len(raw), _SLICE_BYTES):
        parts.append(decoder.decode(raw[start : start + _SLICE_BYTES]))
        await asyncio.sleep(0)
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)


def _item_end(text: str, start: int) -> int | None:
    """Where the item at `start` ends, by the lenient scanner; None where even it cannot
    tell (not JSON there, or nested too deep for it)."""
    try:
        return _DECODER.raw_decode(text, start)[1]
    except (RecursionError, json.JSONDecodeError):
        return None


def _ended(text: str, index: int, raw: bytes, items: list[Any]) -> Any:
    if _WHITESPACE.match(text, index).end() != len(text):  # type: ignore[union-attr]
        return load_json(raw)  # raises for what follows the array
    return items


def _holds_wide_integer(value: object) -> bool:
    # A loop, not recursion: the value may nest deeper than Python's recursion limit.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, int) and not SMALLEST_INTEGER <= item <= LARGEST_INTEGER:
            return True
    return False


class CaseInsensitiveEnum(StrEnum):
    """An enum whose members are also found by their names in any case ("access")."""

    @classmethod
    def _missing_(cls, value: object) -> "CaseInsensitiveEnum | None":
        # Only reached when the exact value is not a member: pydantic validates the usual
        # upper-case names without calling back into Python.
        found = enum_name(value)
        return cls.__members__.get(found) if isinstance(found, str) else None


class EventType(CaseInsensitiveEnum):
    ACCESS = "ACCESS"
    BLOCK = "BLOCK"
    CREATE = "CREATE"
    EXPIRE = "EXPIRE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


class EventStatus(CaseInsensitiveEnum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


class EventFilter(StrEnum):
    """The five read filters of the legacy specification."""

    ACCESS = "ACCESS"
    BLOCK = "BLOCK"
    CREATE = "CREATE"
    EXPIRE = "EXPIRE"
    FAIL = "FAIL"


class Order(StrEnum):
    DESC = "DESC"
    ASC = "ASC"


def is_valid_id(value: object) -> bool:
    """True for an organization or container id: 1-128 of [A-Za-z0-9._:-]."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def parse_timestamp(value: object) -> datetime:
    """Parse an RFC 3339 time that names its timezone; the result is in UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        not_rfc3339 = ValueError("must be an RFC 3339 date-time such as 2023-11-18T12:00:00Z")
        if not RFC3339_PATTERN.fullmatch(value):
            raise not_rfc3339
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError:
            raise not_rfc3339 from None
    else:
        raise ValueError("must be an RFC 3339 date-time string")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("must include a timezone, for example 2023-11-18T12:00:00Z")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        # 9999-12-31T23:59-01:00 is valid text but has no UTC datetime: bad input, not a fault.
        raise ValueError("must fall between years 1 and 9999 in UTC") from None


def enum_name(value: object) -> object:
    """A client's enum name in the case the enums use: they are matched without case."""
    # ASCII only: str.upper() would also turn look-alikes such as "ſuccess" into "SUCCESS".
    return value.upper() if isinstance(value, str) and value.isascii() else value


class NewEvent(BaseModel):
    """An event as a client submits it, validated; defaults filled in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_type: EventType
    status: EventStatus = EventStatus.SUCCESS
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    actor: str | None = Field(default=None, max_length=MAX_ACTOR_LENGTH)
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _aware_timestamp(cls, value: object) -> datetime:
        return parse_timestamp(value)

    @field_validator("actor", mode="before")
    @classmethod
    def _actor_is_text(cls, value: object) -> object:
        if value is not None and not isinstance(value, str):
            raise ValueError("must be a string")
        # PostgreSQL text cannot hold NUL; refusing it everywhere keeps the backends alike.
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("details", mode="before")
    @classmethod
    def _details_default(cls, value: object) -> object:
        return {} if value is None else value

    @field_validator("details")
    @classmethod
    def _details_fit(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            serialised = orjson.dumps(value)
        except orjson.JSONEncodeError:
            if _holds_wide_integer(value):
                raise ValueError(
                    f"must not hold integers beyond 64 bits ({SMALLEST_INTEGER} to"
                    f" {LARGEST_INTEGER})"
                ) from None
            # orjson stops at 254 levels of nesting; deeper input is refused, not a fault.
            raise ValueError("must not nest deeper than 254 levels") from None
        if len(serialised) > MAX_DETAILS_BYTES:
            raise ValueError(f"must serialise to at most {MAX_DETAILS_BYTES} bytes of JSON")
        return value


def validation_errors(error: ValidationError) -> list[dict[str, str]]:
    """Turn a pydantic ValidationError into [{"field", "message"}] for clients."""
    found = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "is not a known field"
        elif item["type"] == "enum":
            message = f"must be one of {item['ctx']['expected']}"
        found.append({"field": field, "message": message})
    return found


class InvalidBatch(ValueError):
    """A batch with bad items: `errors` names each by its index and field."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(f"{len(errors)} invalid batch items")
        self.errors = errors


class BatchEvent(NewEvent):
    """An item of a batch: an event and the container it happened to."""

    container_id: str = Field(pattern=rf"\A{ID_PATTERN.pattern}\z")


# A batch is validated a slice at a time, each slice in one call into pydantic's core (no
# Python loop over the items), and the event loop takes a turn between slices: a 10,000-event
# batch with 3 KiB details took 180 ms in one call, in which no other request was served.
_BATCH = TypeAdapter(list[BatchEvent])
BATCH_SLICE = 1000


def _batch_message(problem: dict[str, str], kind: str) -> str:
    if problem["field"] == "container_id":
        return "is required" if kind == "missing" else ID_RULE
    if kind in ("model_type", "model_attributes_type"):
        return "must be a JSON object"
    return problem["message"]


async def parse_batch(items: object) -> list[tuple[str, NewEvent]]:
    """(container_id, event) pairs from a batch of event objects that each name a container_id.

    Every item is checked before any is stored, and every bad one is reported, as
    `[index].field`, so a client can mend the whole batch in one go.
    """
    if not isinstance(items, list):
        raise InvalidBatch([{"field": "body", "message": "must be a JSON array of events"}])
    if not 1 <= len(items) <= MAX_BATCH_EVENTS:
        message = f"must hold 1 to {MAX_BATCH_EVENTS} events, not {len(items)}"
        raise InvalidBatch([{"field": "body", "message": message}])
    parsed: list[BatchEvent] = []
    errors: list[dict[str, str]] = []
    for start in range(0, len(items), BATCH_SLICE):
        if start:
            await asyncio.sleep(0)
        try:
            parsed += _BATCH.validate_python(items[start : start + BATCH_SLICE])
        except ValidationError as error:
            errors += _batch_errors(error, start)
    if errors:
        raise InvalidBatch(errors)
    return [(event.container_id, event) for event in parsed]


def _batch_errors(error: ValidationError, start: int) -> list[dict[str, str]]:
    """A slice's errors, each named by its item's index in the whole batch."""
    errors = []
    for problem, detail in zip(validation_errors(error), error.errors(), strict=True):
        index, *within = detail["loc"]
        field = ".".join(str(part) for part in within)
        name = f"[{start + int(index)}]"
        errors.append(
            {
                "field": f"{name}.{field}" if field else name,
                "message": _batch_message({**problem, "field": field}, detail["type"]),
            }
        )
    return errors
