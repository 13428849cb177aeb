"""/openapi.json: a valid OpenAPI 3.1 document that describes exactly what the REST shim does."""

import inspect
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.routing import Route

from gateway import counts, rest
from gateway.limits import BATCH_PATH
from gateway.openapi import openapi_document
from tests.factories import auth, count_events, make_events
from tests.rest_assertions import PROBLEM_MEDIA_TYPE, assert_problem

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DOCUMENT_URI = "urn:events-gateway:openapi"
SAMPLE_TIME = "2023-11-18T12:00:00Z"
COUNTS_PATH = "/orgs/{org_id}/events/counts"
COUNTS_QUERY = {"since": "2023-11-18T00:00:00Z", "until": "2023-11-19T00:00:00Z", "by": "hour"}

OPERATIONS = [
    (path, method)
    for path, item in openapi_document()["paths"].items()
    for method in item
    if method in HTTP_METHODS
]
every_operation = pytest.mark.parametrize(
    ("path", "method"), OPERATIONS, ids=[f"{method}:{path}" for path, method in OPERATIONS]
)
every_list_operation = pytest.mark.parametrize(
    "path",
    [path for path, method in OPERATIONS if method == "get" and path != COUNTS_PATH],
)


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    answer = await client.get("/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    return answer.json()


def served_rest_operations(app: Starlette) -> set[tuple[str, str]]:
    """(path, method) for every REST route the app serves."""
    served = set()
    for route in app.routes:
        if not isinstance(route, Route) or route.endpoint.__module__ not in {
            rest.__name__,
            counts.__name__,
        }:
            continue
        if inspect.isclass(route.endpoint) and issubclass(route.endpoint, HTTPEndpoint):
            methods = {name for name in HTTP_METHODS if hasattr(route.endpoint, name)}
        else:
            # Starlette adds HEAD to every GET route by itself; the document lists GET.
            methods = {name.lower() for name in route.methods or ()} - {"head"}
        served |= {(route.path, method) for method in methods}
    return served


def concrete(path: str, org: str = "acme") -> str:
    return path.replace("{org_id}", org).replace("{container_id}", "c1")


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def declared_schema_validator(
    document: dict[str, Any], path: str, method: str, answer: httpx.Response
) -> Draft202012Validator:
    """A JSON Schema 2020-12 validator for the schema the document declares for this answer."""
    status = str(answer.status_code)
    media_type = answer.headers["content-type"]
    responses = document["paths"][path][method]["responses"]
    assert status in responses, f"{method} {path} answered {status}, which is not documented"
    assert media_type in responses[status]["content"], f"{media_type} not documented for {status}"
    pointer = _pointer("paths", path, method, "responses", status, "content", media_type, "schema")
    registry = Registry().with_resource(DOCUMENT_URI, DRAFT202012.create_resource(document))
    return Draft202012Validator(
        {"$ref": f"{DOCUMENT_URI}#/{pointer}"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def assert_documented(
    document: dict[str, Any], path: str, method: str, answer: httpx.Response
) -> None:
    declared_schema_validator(document, path, method, answer).validate(answer.json())
    declared_headers = document["paths"][path][method]["responses"][str(answer.status_code)].get(
        "headers", {}
    )
    for header in ("link", "www-authenticate"):
        if header in answer.headers:
            assert header in {name.lower() for name in declared_headers}, header


def request_body_validator(document: dict[str, Any], path: str) -> Draft202012Validator:
    pointer = _pointer("paths", path, "post", "requestBody", "content", "application/json")
    registry = Registry().with_resource(DOCUMENT_URI, DRAFT202012.create_resource(document))
    return Draft202012Validator(
        {"$ref": f"{DOCUMENT_URI}#/{pointer}/schema"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


async def send(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str],
    *,
    params: dict[str, str] | None = None,
    body: Any = None,
) -> httpx.Response:
    if method == "post" and body is None:
        body = {"event_type": "ACCESS", "timestamp": SAMPLE_TIME}
        if BATCH_PATH.fullmatch(path):  # batch ingest: a list of events that name containers
            body = [{"container_id": "c1", **body}]
    return await client.request(method, path, params=params, json=body, headers=headers)


async def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    OpenAPIV31SpecValidator(document).validate()


async def test_the_document_needs_no_api_key_and_is_what_the_code_builds(document):
    assert document == openapi_document()


async def test_documented_operations_are_exactly_the_rest_routes_served(app, document):
    documented = {(path, method) for path, method in OPERATIONS}

    assert documented == served_rest_operations(app)
    assert len(documented) == 10


@every_operation
async def test_a_success_matches_its_documented_schema(
    client, db, acme_key, document, path, method
):
    # Two of each filter's events, with actor and details set, so every list has a next page.
    await make_events(
        db,
        "acme",
        [
            ("c1", {"event_type": event_type, "status": status, "actor": "a", "details": {"k": 1}})
            for event_type in ("ACCESS", "BLOCK", "CREATE", "EXPIRE")
            for status in ("SUCCESS", "FAILURE")
        ],
    )
    params = {"limit": "1"} if method == "get" else None
    if path == COUNTS_PATH:
        params = COUNTS_QUERY

    answer = await send(client, method, concrete(path), auth(acme_key), params=params)

    assert answer.status_code == 200, answer.text
    if method == "get" and path != COUNTS_PATH:
        assert len(answer.json()["events"]) == 1 and answer.json()["next_cursor"]
    assert_documented(document, path, method, answer)


@every_operation
async def test_each_error_matches_its_documented_problem_schema(
    client, db, acme_key, document, path, method
):
    await make_events(db, "acme", [("c1", {})])
    bad_input = {"params": {"limit": "0"}} if method == "get" else {"body": {"event_type": "OPEN"}}
    answers = {
        400: await send(client, method, concrete(path), auth(acme_key), **bad_input),
        401: await send(client, method, concrete(path), {}),
        404: await send(client, method, concrete(path, org="ghst"), auth(acme_key)),
    }

    for status, answer in answers.items():
        assert_problem(answer, status)
        assert answer.headers["content-type"] == PROBLEM_MEDIA_TYPE
        assert_documented(document, path, method, answer)


async def test_an_oversized_post_matches_the_documented_413(client, acme_key, document):
    path = "/orgs/{org_id}/containers/{container_id}/events"
    body = {"event_type": "ACCESS", "details": {"blob": "x" * 1024 * 1024}}

    answer = await send(client, "post", concrete(path), auth(acme_key), body=body)

    assert_problem(answer, 413)
    assert_documented(document, path, "post", answer)


@pytest.mark.parametrize(
    "body",
    [
        {"event_type": "ACCESS", "timestamp": SAMPLE_TIME, "status": "SUCCESS"},
        {"event": {"event_type": "access"}},
        {"event_type": "BLOCK", "actor": None, "details": {"ip": "10.0.0.1"}},
    ],
    ids=["spec_example", "wrapped", "with_actor_and_details"],
)
async def test_bodies_the_post_accepts_are_valid_against_the_documented_request_body(
    client, acme_key, document, body
):
    path = "/orgs/{org_id}/containers/{container_id}/events"
    request_body_validator(document, path).validate(body)

    answer = await send(client, "post", concrete(path), auth(acme_key), body=body)

    assert answer.status_code == 200, answer.text


async def test_the_documented_request_example_is_accepted(client, acme_key, document):
    path = "/orgs/{org_id}/containers/{container_id}/events"
    example = document["components"]["schemas"]["NewEvent"]["example"]

    answer = await send(client, "post", concrete(path), auth(acme_key), body=example)

    assert answer.status_code == 200, answer.text


def sample_values(parameter: dict[str, Any], cursor: str) -> list[str]:
    """Values a client reading only the document could send for this query parameter."""
    schema = parameter["schema"]
    if parameter["name"] == "cursor":
        return [cursor]
    if "enum" in schema:
        return [str(value) for value in schema["enum"]]
    if schema.get("type") == "integer":
        return [str(schema["minimum"]), str(schema["maximum"]), str(schema["default"])]
    if schema.get("format") == "date-time":
        return [SAMPLE_TIME, "2023-11-18T13:00:00+01:00"]
    if "pattern" in schema:
        return ["c1"]
    raise AssertionError(f"no sample for {parameter}")


@every_list_operation
async def test_every_documented_query_parameter_is_accepted(client, db, acme_key, document, path):
    await make_events(db, "acme", [("c1", {"status": "FAILURE"})] * 3)
    # A cursor names a position in the org's events, so any list's cursor is valid on any list.
    first = await send(client, "get", "/orgs/acme/events", auth(acme_key), params={"limit": "1"})
    cursor = first.json()["next_cursor"]
    assert cursor
    query_parameters = [
        p for p in document["paths"][path]["get"]["parameters"] if p["in"] == "query"
    ]
    assert {"limit", "cursor", "since", "until", "order"} <= {p["name"] for p in query_parameters}

    for parameter in query_parameters:
        for value in sample_values(parameter, cursor):
            params = {parameter["name"]: value}
            answer = await send(client, "get", concrete(path), auth(acme_key), params=params)
            assert answer.status_code == 200, (params, answer.text)


@every_operation
async def test_an_undocumented_query_parameter_is_refused(
    client, db, acme_key, document, path, method
):
    await make_events(db, "acme", [("c1", {})])
    documented = {p["name"] for p in document["paths"][path][method]["parameters"]}
    assert "page" not in documented

    answer = await send(client, method, concrete(path), auth(acme_key), params={"page": "2"})

    assert_problem(answer, 400, "page")


async def test_container_id_query_is_documented_on_the_org_lists_only(document):
    for path, method in OPERATIONS:
        parameters = document["paths"][path][method]["parameters"]
        in_query = {p["name"] for p in parameters if p["in"] == "query"}
        org_list = method == "get" and "{container_id}" not in path
        assert ("container_id" in in_query) == org_list, (method, path)


def documented_examples(document: dict[str, Any]) -> list[tuple[str, Any]]:
    """(JSON pointer of the media type, example value) for every example of every operation."""
    found = []
    for path, method in OPERATIONS:
        operation = document["paths"][path][method]
        media = [("requestBody",), *(("responses", status) for status in operation["responses"])]
        for where in media:
            owner = operation
            for part in where:
                owner = owner.get(part, {})
            for media_type, content in owner.get("content", {}).items():
                pointer = _pointer("paths", path, method, *where, "content", media_type)
                if "example" in content:
                    found.append((pointer, content["example"]))
                for name, example in content.get("examples", {}).items():
                    found.append((f"{pointer}/examples/{name}", example["value"]))
    return found


def test_every_example_matches_its_schema():
    document = openapi_document()
    registry = Registry().with_resource(DOCUMENT_URI, DRAFT202012.create_resource(document))
    examples = documented_examples(document)

    for pointer, example in examples:
        media_type = pointer.split("/examples/")[0]
        validator = Draft202012Validator(
            {"$ref": f"{DOCUMENT_URI}#/{media_type}/schema"},
            registry=registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        validator.validate(example)
    # A success example for every operation, and an example of every documented problem.
    for path, method in OPERATIONS:
        for status in document["paths"][path][method]["responses"]:
            assert any(
                f"/{_pointer('responses', status)}/content/" in pointer for pointer, _ in examples
            ), (method, path, status)


def test_the_specifications_example_request_and_response_are_documented():
    operation = openapi_document()["paths"]["/orgs/{org_id}/containers/{container_id}/events"]
    spec_request = {"event_type": "ACCESS", "timestamp": SAMPLE_TIME, "status": "SUCCESS"}

    requests = operation["post"]["requestBody"]["content"]["application/json"]["examples"]
    response = operation["post"]["responses"]["200"]["content"]["application/json"]["example"]

    assert requests["specification"]["value"] == spec_request
    assert response["message"] == "Event logged successfully"
    assert {key: response["event"][key] for key in spec_request} == spec_request


async def test_every_request_example_is_accepted(client, db, acme_key):
    examples = [
        (pointer, example)
        for pointer, example in documented_examples(openapi_document())
        if "/requestBody/" in pointer
    ]
    assert len(examples) == 5

    for pointer, example in examples:
        path = pointer.split("/")[1].replace("~1", "/")
        if "x-ndjson" in pointer:
            headers = {**auth(acme_key), "Content-Type": "application/x-ndjson"}
            answer = await client.post(concrete(path), content=example, headers=headers)
        else:
            answer = await send(client, "post", concrete(path), auth(acme_key), body=example)
        assert answer.status_code == 200, (pointer, answer.text)
    assert await count_events(db) == 1 + 1 + 1 + 2 + 2
