"""Hostile requests to /graphql: every one must get a coded answer, never a 5xx, within 1 s.

    python -m bench.hostile_graphql [--repeat 3]

Each case is a method, headers and raw body bytes (or a query string for GET) built to break
something: documents past the depth, alias and token limits, fragment cycles, bodies around
the 1 MiB limit, bytes that are not UTF-8 or not JSON, wrong types where the transport expects
objects and strings, batches (not supported), introspection bombs, directive floods, wrong
content types. tests/test_graphql_hostile.py sends them in-process and checks the answers;
this module sends them to the gateway under uvicorn (one worker, a new SQLite file) and prints
per case the status, the first error's code and the slowest of `--repeat` tries, then the
maximum time and the count of 5xx answers. Figures only; nothing asserts a time here.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

from bench.http import Target, serving
from bench.ingest import create_database

ORG_ID = "hostile"
MAX_BODY_BYTES = 1024 * 1024  # gateway.config.Settings.max_body_bytes
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Case:
    """One request, sent with a valid API key added to `headers`."""

    name: str
    body: bytes = b""
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    query_string: str = ""  # for GET, after the `?`

    @property
    def path(self) -> str:
        return "/graphql" + (f"?{self.query_string}" if self.query_string else "")


def _operation(query: object, **fields: object) -> bytes:
    return json.dumps({"query": query, **fields}).encode()


def _raw(name: str, body: bytes, content_type: str | None = "application/json") -> Case:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    return Case(name, body, headers=headers)


def _query(name: str, query: str, **fields: object) -> Case:
    return Case(name, _operation(query, **fields))


def _get(name: str, **params: str) -> Case:
    query_string = "&".join(f"{key}={quote(value)}" for key, value in params.items())
    return Case(name, method="GET", headers={}, query_string=query_string)


def _deep_events(org_id: str, depth: int) -> str:
    """org { events { nodes { container { events { nodes { container ... } } } } } }"""
    inner = "id"
    for _ in range(depth):
        inner = f"events {{ nodes {{ container {{ {inner} }} }} }}"
    return f'{{ org(id: "{org_id}") {{ {inner} }} }}'


def _body_of_size(size: int, org_id: str) -> bytes:
    """A valid operation whose `id` argument pads the JSON body to exactly `size` bytes."""
    empty = _operation(f'{{ org(id: "{org_id}") {{ id }} }}')
    padding = "x" * (size - len(empty))
    return _operation(f'{{ org(id: "{org_id}{padding}") {{ id }} }}')


def _variables_of_size(size: int, org_id: str) -> bytes:
    """An operation whose `$id` variable pads the JSON body to exactly `size` bytes."""
    query = "query Org($id: ID!) { org(id: $id) { id } }"
    empty = _operation(query, variables={"id": org_id})
    return _operation(query, variables={"id": org_id + "y" * (size - len(empty))})


def _of_type_chain(levels: int) -> str:
    inner = "name"
    for _ in range(levels):
        inner = f"name kind ofType {{ {inner} }}"
    return f'{{ __type(name: "Event") {{ fields {{ type {{ {inner} }} }} }} }}'


DEEP_LIST = json.loads("[" * 500 + "]" * 500)
ESCAPES = "\\u0041" * 100_000
FULL_INTROSPECTION = """
  types { name kind description
    fields(includeDeprecated: true) { name description
      args { name description type { name kind ofType { name kind ofType { name kind } } } }
      type { name kind ofType { name kind ofType { name kind ofType { name kind } } } } }
    inputFields { name type { name kind ofType { name kind } } }
    enumValues(includeDeprecated: true) { name description }
    possibleTypes { name } }
  directives { name description locations args { name } }
"""


def cases(org_id: str, max_body_bytes: int = MAX_BODY_BYTES) -> list[Case]:
    """Every hostile case, for an org the key can see."""
    org = f'org(id: "{org_id}")'
    fragments = " ".join(f"fragment F{i} on Organization {{ id }}" for i in range(3000))
    spreads = " ".join(f"...F{i}" for i in range(3000))
    return [
        # Documents past the limits.
        _query("depth: 12 levels of real fields", _deep_events(org_id, 6)),
        _query("depth: 200 levels of real fields", _deep_events(org_id, 100)),
        _query("depth: 1,000 nested braces", "{" + "a {" * 1000 + "b" + "}" * 1001),
        _query("depth: 100,000 nested braces", "{" * 100_000 + "}" * 100_000),
        _query(
            "aliases: 1,000 of __typename",
            "{" + " ".join(f"a{i}: __typename" for i in range(1000)) + "}",
        ),
        _query(
            "aliases: 31 of org", "{" + " ".join(f"o{i}: {org} {{ id }}" for i in range(31)) + "}"
        ),
        _query("tokens: 80,000 fields", "{" + " __typename" * 80_000 + "}"),
        _query("fragments: 3,000 defined and spread", f"{{ {org} {{ {spreads} }} }} {fragments}"),
        _query(
            "fragments: a cycle A -> B -> A",
            f"{{ {org} {{ ...A }} }} fragment A on Organization {{ id ...B }} "
            "fragment B on Organization { name ...A }",
        ),
        _query(
            "fragments: a fragment spreading itself",
            f"{{ {org} {{ ...A }} }} fragment A on Organization {{ ...A }}",
        ),
        _query("fragments: an unknown fragment spread", f"{{ {org} {{ ...Missing }} }}"),
        _query(
            "fragments: on an unknown type",
            f"{{ {org} {{ ...A }} }} fragment A on Nothing {{ id }}",
        ),
        # Giant strings.
        Case(
            "body: 1 KiB under the limit (argument)", _body_of_size(max_body_bytes - 1024, org_id)
        ),
        Case("body: 1 byte over the limit (argument)", _body_of_size(max_body_bytes + 1, org_id)),
        Case(
            "body: 1 KiB under the limit (variable)",
            _variables_of_size(max_body_bytes - 1024, org_id),
        ),
        Case(
            "body: 1 byte over the limit (variable)", _variables_of_size(max_body_bytes + 1, org_id)
        ),
        Case("body: 8 MiB", b'{"query": "' + b"z" * (8 * 1024 * 1024) + b'"}'),
        _query("string: 100,000 escapes in a literal", f'{{ org(id: "{ESCAPES}") {{ id }} }}'),
        # Bytes and JSON.
        _raw("bytes: invalid UTF-8 in the JSON body", b'{"query": "{ __typename \xff\xfe }"}'),
        _raw("bytes: invalid UTF-8 as the whole body", b"\xff\xfe\xfd" * 100),
        _raw("bytes: NUL bytes in the document", _operation('{ org(id: "a\x00b") { id } }')),
        _raw("bytes: a lone surrogate escape", b'{"query": "{ org(id: \\"\\ud800\\") { id } }"}'),
        _raw("json: not JSON", b"{not json"),
        _raw("json: empty body", b""),
        _raw("json: a number", b"5"),
        _raw("json: a string", b'"{ __typename }"'),
        _raw("json: null", b"null"),
        _raw("json: 100,000 nested arrays", b"[" * 100_000 + b"]" * 100_000),
        _raw(
            "json: 100,000 nested objects in variables",
            b'{"query": "{ __typename }", "variables": '
            + b'{"a":' * 100_000
            + b"1"
            + b"}" * 100_001,
        ),
        _raw(
            "json: a 5,000-digit integer",
            b'{"query": "{ __typename }", "variables": {"n": ' + b"9" * 5000 + b"}}",
        ),
        _raw("json: duplicate keys", b'{"query": "{ __typename }", "query": 5}'),
        Case("json: query is a number", _operation(5)),
        Case("json: query is an object", _operation({"query": "{ __typename }"})),
        Case("json: query is a list", _operation(["{ __typename }"])),
        Case("json: no query", b'{"variables": {}}'),
        Case("json: query is null", _operation(None)),
        Case("json: query is empty", _operation("")),
        Case("json: variables is a list", _operation("{ __typename }", variables=[1, 2])),
        Case("json: variables is a string", _operation("{ __typename }", variables="{}")),
        Case("json: extensions is a list", _operation("{ __typename }", extensions=[1])),
        Case("json: operationName is a number", _operation("{ __typename }", operationName=5)),
        Case(
            "json: operationName is a list",
            _operation("query A { __typename }", operationName=["A"]),
        ),
        # Variables and values of the wrong type.
        _query(
            "variables: a string for Int",
            f"query E($n: Int) {{ {org} {{ events(first: $n) {{ nodes {{ id }} }} }} }}",
            variables={"n": "ten"},
        ),
        _query(
            "variables: an object for ID!",
            "query Org($id: ID!) { org(id: $id) { id } }",
            variables={"id": {"$ne": None}},
        ),
        _query(
            "variables: a 2^64 integer for Int",
            f"query E($n: Int) {{ {org} {{ events(first: $n) {{ nodes {{ id }} }} }} }}",
            variables={"n": 2**64},
        ),
        _query(
            "literal: a 400-digit integer",
            f"{{ {org} {{ events(first: {'9' * 400}) {{ nodes {{ id }} }} }} }}",
        ),
        _query(
            "literal: a 1e400 float for Int",
            f"{{ {org} {{ events(first: 1e400) {{ nodes {{ id }} }} }} }}",
        ),
        _query(
            "literal: a negative page size",
            f"{{ {org} {{ events(first: -1) {{ nodes {{ id }} }} }} }}",
        ),
        _query(
            "literal: a garbage cursor",
            f'{{ {org} {{ events(after: "{"A" * 5000}") {{ nodes {{ id }} }} }} }}',
        ),
        _query(
            "literal: a garbage DateTime",
            f'{{ {org} {{ events(since: "not a time") {{ nodes {{ id }} }} }} }}',
        ),
        _query(
            "literal: a year 10000 DateTime",
            f'{{ {org} {{ events(since: "10000-01-01T00:00:00Z") {{ nodes {{ id }} }} }} }}',
        ),
        _query(
            "variables: deeply nested JSON details",
            "mutation L($org: ID!, $e: ContainerEventInput!) "
            '{ logContainerEvent(orgId: $org, containerId: "c", event: $e) { message } }',
            variables={"org": org_id, "e": {"eventType": "ACCESS", "details": DEEP_LIST}},
        ),
        # Operations and names.
        _query(
            "operations: 500 with no operationName",
            " ".join(f"query Q{i} {{ __typename }}" for i in range(500)),
        ),
        _query(
            "operations: three named, no operationName",
            "query A { __typename } query B { __typename } query C { __typename }",
        ),
        _query("operations: an unknown operationName", "query A { __typename }", operationName="B"),
        _query("operations: two anonymous", "{ __typename } { __typename }"),
        _query(
            "operations: a subscription over HTTP",
            'subscription { containerEvents(orgId: "x") { id } }',
        ),
        Case(
            "batch: two operations in a JSON array",
            json.dumps([{"query": "{ __typename }"}] * 2).encode(),
        ),
        Case("batch: an empty JSON array", b"[]"),
        # Introspection bombs.
        _query("introspection: an ofType chain 300 deep", _of_type_chain(300)),
        _query(
            "introspection: the full schema under 30 aliases",
            "{" + " ".join(f"s{i}: __schema {{ {FULL_INTROSPECTION} }}" for i in range(30)) + "}",
        ),
        _query(
            "introspection: __type nested in fields 20 deep",
            '{ __type(name: "Query") { '
            + "fields { type { fields { type { " * 20
            + "name"
            + " } } } }" * 20
            + " } }",
        ),
        # Directive floods.
        _query(
            "directives: 500 @include on one field",
            "{ __typename" + " @include(if: true)" * 500 + " }",
        ),
        _query(
            "directives: 300 @skip on one field", "{ __typename" + " @skip(if: false)" * 300 + " }"
        ),
        _query(
            "directives: 300 unknown ones",
            "{ __typename" + "".join(f" @d{i}" for i in range(300)) + " }",
        ),
        _query(
            "directives: @include with a variable of the wrong type",
            "query Q($b: Boolean!) { __typename @include(if: $b) }",
            variables={"b": "yes"},
        ),
        # Transport: content types and methods.
        _raw("content type: text/plain", _operation("{ __typename }"), "text/plain"),
        _raw("content type: none", _operation("{ __typename }"), None),
        _raw(
            "content type: form-urlencoded",
            b"query=%7B__typename%7D",
            "application/x-www-form-urlencoded",
        ),
        _raw("content type: multipart without boundary", b"--x\r\n", "multipart/form-data"),
        _raw(
            "content type: multipart with a file",
            b'--b\r\nContent-Disposition: form-data; name="operations"\r\n\r\n'
            b'{"query": "{ __typename }"}\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
        _raw(
            "content type: JSON in latin-1",
            b'{"query": "{ org(id: \\"caf\xe9\\") { id } }"}',
            "application/json; charset=latin-1",
        ),
        _get(
            "get: a mutation",
            query=f'mutation {{ logContainerEvent(orgId: "{org_id}", containerId: "c", '
            "event: {eventType: ACCESS}) { message } }",
        ),
        _get(
            "get: variables that are not JSON",
            query="query Q($n: Int) { __typename }",
            variables="{nope",
        ),
        _get("get: variables that are a list", query="{ __typename }", variables="[1]"),
        Case("get: no query", method="GET", headers={"Accept": "application/json"}),
        Case(
            "get: invalid percent-encoding",
            method="GET",
            headers={},
            query_string="query=%FF%FE%7B&variables=%ZZ",
        ),
        _get("get: a 200-level deep document", query=_deep_events(org_id, 100)),
        Case("put: not an allowed method", _operation("{ __typename }"), method="PUT"),
    ]


def error_code(answer: httpx.Response) -> str:
    """The first error's extensions.code (or the problem's title), for printing."""
    try:
        body = answer.json()
    except ValueError:
        return "(not JSON)"
    if isinstance(body, dict) and body.get("errors"):
        return str(body["errors"][0].get("extensions", {}).get("code", "(no code)"))
    if isinstance(body, dict) and "title" in body:
        return f"problem: {body['title']}"
    return "-"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="tries per case; the slowest counts")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hostile-") as scratch:
        path = Path(scratch) / "events.db"
        key = asyncio.run(create_database(path, ORG_ID))
        env = {**os.environ, "EVENTS_GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{path}"}
        target = Target("gateway", "gateway.app:create_app", True, "/graphql")
        slowest = 0.0
        server_errors = 0
        with (
            serving(target, env) as (base, _pid),
            httpx.Client(base_url=base, timeout=30) as client,
        ):
            for case in cases(ORG_ID):
                seconds = 0.0
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    answer = client.request(
                        case.method,
                        case.path,
                        content=case.body or None,
                        headers={**case.headers, "Authorization": f"Bearer {key}"},
                    )
                    seconds = max(seconds, time.perf_counter() - started)
                    server_errors += answer.status_code >= 500
                slowest = max(slowest, seconds)
                code = error_code(answer)
                print(f"{answer.status_code}  {seconds * 1000:7.1f} ms  {code:<28} {case.name}")
        print(f"\nmax time: {slowest * 1000:.1f} ms; 5xx answers: {server_errors}")
        if server_errors:
            sys.exit(1)


if __name__ == "__main__":
    main()
