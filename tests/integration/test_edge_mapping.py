"""Every google.api.http mapping rule, the proto3 JSON edge cases and every gRPC status through the real edge: a dev
agent, the plain grpc.aio mapping server (tests/support/mapping_server.py, registered in the agent directly as
``mapping`` and ``faults``) and the edge process, each on loopback. The server answers each call with the request
bytes it received, so each test asserts the message the upstream got, not what the edge meant to send."""

from __future__ import annotations

import base64
import json
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2, wrappers_pb2
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from openapi_spec_validator import validate

from meshlet_api.mapping.v1 import mapping_pb2
from tests.support.agents import Agent, start_dev_agent
from tests.support.descriptor_sets import write_descriptor_set
from tests.support.processes import Child, Processes, free_port, http_ok, processes, wait_until
from tests.support.sidecars import START_S, write_config

WAIT_S = 20.0  # bounds waiting for a process or an answer, never a timing assertion
LIBRARY = "meshlet.mapping.v1.Library"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
FAULT_DETAIL = "type.googleapis.com/meshlet.mapping.v1.FaultDetail"
BEYOND_DOUBLE = "9007199254740993"  # 2**53 + 1: a JSON number read as a double would lose it
UINT64_MAX = "18446744073709551615"
# Each well-known type, and the JSON form proto3 gives it (a wrapper set to its default, an Any by its @type).
WELL_KNOWN = {
    "at": "2024-05-01T12:00:00.250Z",
    "wait": "1.500s",
    "mask": "title,favourite.pages",
    "attributes": {"a": [1, "b", None, {"c": True}], "d": 2.5},
    "anything": {"nested": ["x"]},
    "list": [1, "two", False, None],
    "maybeInt32": 0,
    "maybeString": "",
    "maybeBool": False,
    "maybeDouble": 1.5,
    "maybeBytes": base64.b64encode(b"\x00\x01").decode(),
    "doubleValue": "NaN",
    "floatValue": "-Infinity",
    "maybeCount": 0,
    "extra": {"@type": "type.googleapis.com/meshlet.mapping.v1.Book", "id": "b-1", "pages": BEYOND_DOUBLE},
}


@dataclass
class Front:
    edge: Child
    url: str
    descriptors: Path


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with processes(tmp_path_factory.mktemp("procs")) as procs:
        yield procs


def register(agent: Agent, name: str, port: int) -> None:
    """An instance of `name` at 127.0.0.1:`port` with no check, which Consul counts as passing."""
    service = {"Name": name, "ID": f"{name}-1", "Address": "127.0.0.1", "Port": port}
    request = urllib.request.Request(
        f"{agent.url}/v1/agent/service/register", data=json.dumps(service).encode(), method="PUT"
    )
    urllib.request.urlopen(request, timeout=5).close()


def start_edge(procs: Processes, folder: Path, config: dict[str, Any], name: str) -> tuple[Child, int, int]:
    config_path = write_config(folder / f"{name}.yaml", config)
    listen, admin = free_port(), free_port()
    argv = [
        sys.executable, "-m", "meshlet_edge", "--config", str(config_path),
        "--listen", f"127.0.0.1:{listen}", "--admin-addr", f"127.0.0.1:{admin}",
    ]  # fmt: skip
    return procs.start(argv, name=name), listen, admin


@pytest.fixture(scope="module")
def front(module_procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Front:
    folder = tmp_path_factory.mktemp("edge-mapping")
    agent = start_dev_agent(module_procs)
    port = free_port()
    server = module_procs.start([sys.executable, "-m", "tests.support.mapping_server", "--port", str(port)], name="map")
    wait_until(lambda: f"listening on {port}" in server.output() or not server.alive(), START_S, "the mapping server")
    assert server.alive(), server.output()
    register(agent, "mapping", port)
    register(agent, "faults", port)  # the same process: its failures trip no breaker of mapping's
    descriptors = write_descriptor_set(folder / "mapping.pb", mapping_pb2.DESCRIPTOR)
    config = {
        "tls": {"source": "off"},
        "consul": {"address": agent.url},
        "edge": {
            "services": {LIBRARY: "mapping", "meshlet.mapping.v1.Faults": "faults"},
            "descriptor_sets": [str(descriptors)],
        },
        # every code is answered as the server sent it: no retry, no breaker opening after a few failures
        "upstreams": {"faults": {"retry": {"max_attempts": 1}, "breaker": {"failures": 1000}}},
    }
    edge, listen, admin = start_edge(module_procs, folder, config, "edge")
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{admin}/ready") or not edge.alive(), START_S, "the edge ready")
    except AssertionError:
        raise AssertionError(f"the edge never turned ready:\n{edge.output()}") from None
    assert edge.alive(), f"the edge exited at start:\n{edge.output()}"
    return Front(edge, f"http://127.0.0.1:{listen}", descriptors)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        yield session


async def call(http: aiohttp.ClientSession, verb: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {} if data is None else {"Content-Type": "application/json"}
    async with http.request(verb, url, data=data, headers=headers) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()


async def received(front: Front, http: aiohttp.ClientSession, verb: str, path: str, body: Any = None) -> Any:
    """The request message the upstream received for one HTTP request (which must succeed), by its method."""
    status, answer = await call(http, verb, front.url + path, body)
    assert status == 200, answer
    method = mapping_pb2.DESCRIPTOR.services_by_name["Library"].methods_by_name[answer["method"].rsplit("/", 1)[1]]
    message_type = getattr(mapping_pb2, method.input_type.name)
    return answer["method"], message_type.FromString(base64.b64decode(answer.get("request", "")))


def violations(answer: dict[str, Any]) -> list[str]:
    """The fields a 400's google.rpc.BadRequest names."""
    found = [d for d in answer["details"] if d["@type"] == BAD_REQUEST]
    assert found, answer
    return [v["field"] for v in found[0]["fieldViolations"]]


# ------------------------------------------------------------------------------------------ path templates


async def test_get_binds_a_path_variable_decoded_and_the_rest_from_the_query(front: Front, http) -> None:
    method, got = await received(front, http, "GET", "/v1/shelves/sea%20%2F%20sky?with_books=true")
    assert method == f"/{LIBRARY}/GetShelf"
    assert got == mapping_pb2.GetShelfRequest(shelf="sea / sky", with_books=True)


async def test_nested_field_paths_in_the_path_fill_nested_messages(front: Front, http) -> None:
    _, got = await received(front, http, "GET", "/v1/shelf-1/books/book-9")
    assert got == mapping_pb2.GetBookRequest(shelf=mapping_pb2.Shelf(id="shelf-1"), book=mapping_pb2.Book(id="book-9"))


async def test_a_segment_template_binds_the_whole_resource_name(front: Front, http) -> None:
    method, got = await received(front, http, "GET", "/v1/shelves/s1/books/b1?etag=e-7")
    assert method == f"/{LIBRARY}/GetBookByName"
    assert got == mapping_pb2.NamedRequest(name="shelves/s1/books/b1", etag="e-7")
    status, answer = await call(http, "GET", front.url + "/v1/shelves/s1/chapters/b1")
    assert (status, answer["code"]) == (404, 5)


async def test_a_double_star_takes_any_number_of_segments_and_keeps_an_escaped_slash(front: Front, http) -> None:
    _, got = await received(front, http, "GET", "/v1/files/a/b/c.txt")
    assert got.path == "a/b/c.txt"
    _, got = await received(front, http, "GET", "/v1/files/a%2Fb/caf%C3%A9%20d.txt")
    assert got.path == "a%2Fb/café d.txt"


async def test_a_custom_verb_routes_to_its_method_with_the_body(front: Front, http) -> None:
    method, got = await received(front, http, "POST", "/v1/shelves/s1/books/b1:publish", {"etag": "e-1"})
    assert method == f"/{LIBRARY}/PublishBook"
    assert got == mapping_pb2.NamedRequest(name="shelves/s1/books/b1", etag="e-1")


async def test_a_custom_http_method_is_served(front: Front, http) -> None:
    method, got = await received(front, http, "PURGE", "/v1/cache/k-1")
    assert method == f"/{LIBRARY}/Purge"
    assert got == mapping_pb2.PurgeRequest(key="k-1")


# ------------------------------------------------------------------------------------------ bodies and verbs


async def test_body_star_is_the_whole_request_and_a_path_variable_wins_over_the_body(front: Front, http) -> None:
    _, got = await received(front, http, "POST", "/v1/search", {"query": "tea", "page": {"size": 5}})
    assert got == mapping_pb2.SearchRequest(query="tea", page=mapping_pb2.Page(size=5))
    _, got = await received(front, http, "POST", "/v1/shelves/s1/books/b1:publish", {"name": "shelves/x/books/y"})
    assert got.name == "shelves/s1/books/b1"


async def test_a_body_field_takes_the_body_and_the_rest_comes_from_path_and_query(front: Front, http) -> None:
    book = {"title": "Tides", "genre": "POETRY", "pages": "120", "tags": ["sea"]}
    method, got = await received(front, http, "POST", "/v1/shelves/s1/books?requestId=r-1&validate_only=true", book)
    assert method == f"/{LIBRARY}/CreateBook"
    assert got == mapping_pb2.CreateBookRequest(
        shelf="s1",
        book=mapping_pb2.Book(title="Tides", genre=mapping_pb2.POETRY, pages=120, tags=["sea"]),
        request_id="r-1",
        validate_only=True,
    )
    _, got = await received(front, http, "POST", "/v1/shelves/s1/books?book.title=Q&shelf=s9", {"title": "B"})
    assert (got.shelf, got.book.title) == ("s1", "B")  # what the path and the body bind, the query cannot change


async def test_patch_binds_the_body_field_the_path_inside_it_and_a_field_mask_from_the_query(
    front: Front, http
) -> None:
    _, got = await received(
        front, http, "PATCH", "/v1/books/b1?updateMask=title,genre", {"id": "sneaky", "title": "New"}
    )
    assert got == mapping_pb2.UpdateBookRequest(
        book=mapping_pb2.Book(id="books/b1", title="New"),
        update_mask=field_mask_pb2.FieldMask(paths=["title", "genre"]),
    )


async def test_put_binds_the_body_field_with_the_path_inside_it(front: Front, http) -> None:
    method, got = await received(front, http, "PUT", "/v1/shelves/s1", {"theme": "sea"})
    assert method == f"/{LIBRARY}/ReplaceShelf"
    assert got == mapping_pb2.ReplaceShelfRequest(shelf=mapping_pb2.Shelf(id="s1", theme="sea"))


async def test_delete_takes_the_path_and_the_query_without_a_body(front: Front, http) -> None:
    method, got = await received(front, http, "DELETE", "/v1/books/b1?force=true&etag=e-2")
    assert method == f"/{LIBRARY}/DeleteBook"
    assert got == mapping_pb2.DeleteBookRequest(id="b1", force=True, etag=wrappers_pb2.StringValue(value="e-2"))


async def test_additional_bindings_reach_the_same_method(front: Front, http) -> None:
    answers = [
        await received(front, http, "GET", "/v1/search?query=tea&page.size=3"),
        await received(front, http, "POST", "/v1/search", {"query": "tea", "page": {"size": 3}}),
        await received(front, http, "GET", "/v1/shelves/s1/search?query=tea&page.size=3"),
    ]
    page = mapping_pb2.Page(size=3)
    assert answers == [
        (f"/{LIBRARY}/Search", mapping_pb2.SearchRequest(query="tea", page=page)),
        (f"/{LIBRARY}/Search", mapping_pb2.SearchRequest(query="tea", page=page)),
        (f"/{LIBRARY}/Search", mapping_pb2.SearchRequest(shelf="s1", query="tea", page=page)),
    ]


async def test_a_method_without_annotation_is_post_package_service_method(front: Front, http) -> None:
    method, got = await received(front, http, "POST", f"/{LIBRARY}/Ping", {"int64Value": "7", "name": "p"})
    assert method == f"/{LIBRARY}/Ping"
    assert got == mapping_pb2.Everything(int64_value=7, name="p")
    status, answer = await call(http, "GET", f"{front.url}/{LIBRARY}/Ping")
    assert (status, answer["code"]) == (405, 12)


async def test_response_body_answers_only_that_field(front: Front, http) -> None:
    books = [{"id": "b1", "pages": BEYOND_DOUBLE}, {"id": "b2", "genre": "HISTORY"}]
    status, answer = await call(http, "POST", front.url + "/v1/mirror:books", {"books": books, "name": "left out"})
    assert status == 200, answer
    assert answer == books
    status, answer = await call(http, "POST", front.url + "/v1/mirror:books", {"name": "no books"})
    assert (status, answer) == (200, [])  # the empty list, not null


# ------------------------------------------------------------------------------------------ query parameters


async def test_query_parameters_repeat_and_nest(front: Front, http) -> None:
    path = "/v1/shelves/s1/books?tags=a&tags=b&page.size=10&page.token=t-1&shelf=ignored"
    _, got = await received(front, http, "GET", path)
    assert got == mapping_pb2.ListBooksRequest(shelf="s1", tags=["a", "b"], page=mapping_pb2.Page(size=10, token="t-1"))


async def test_query_parameters_on_enums_by_name_or_number_and_on_64_bit_integers(front: Front, http) -> None:
    path = f"/v1/shelves/s1/books?genre=HISTORY&genres=FICTION&genres=3&minPages={BEYOND_DOUBLE}&max_pages={UINT64_MAX}"
    _, got = await received(front, http, "GET", path)
    assert got == mapping_pb2.ListBooksRequest(
        shelf="s1",
        genre=mapping_pb2.HISTORY,
        genres=[mapping_pb2.FICTION, mapping_pb2.POETRY],
        min_pages=int(BEYOND_DOUBLE),
        max_pages=int(UINT64_MAX),
    )


async def test_query_parameters_on_well_known_types_and_scalars(front: Front, http) -> None:
    cursor = base64.urlsafe_b64encode(b"\xfb\xff page 2").decode()
    query = f"min_rating=4.5&published_after=2024-05-01T12:00:00Z&within=3600s&limit=7&in_print=false&cursor={cursor}"
    _, got = await received(front, http, "GET", "/v1/shelves/s1/books?" + query)
    expected = mapping_pb2.ListBooksRequest(
        shelf="s1",
        min_rating=4.5,
        published_after=timestamp_pb2.Timestamp(seconds=1714564800),
        within=duration_pb2.Duration(seconds=3600),
        limit=wrappers_pb2.Int32Value(value=7),
        in_print=wrappers_pb2.BoolValue(value=False),
        cursor=b"\xfb\xff page 2",
    )
    assert got == expected
    assert got.HasField("in_print")  # a wrapper set to its default is still set


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("colour=red", "colour"),
        ("page.colour=red", "page.colour"),
        ("genre=EPIC", "genre"),
        ("minPages=many", "minPages"),
    ],
    ids=["unknown", "unknown-nested", "unknown-enum", "not-a-number"],
)
async def test_a_query_parameter_that_is_not_the_message_is_a_400_naming_it(front: Front, http, query, field) -> None:
    status, answer = await call(http, "GET", front.url + "/v1/shelves/s1/books?" + query)
    assert status == 400, answer
    assert answer["code"] == 3
    assert violations(answer) == [field]


@pytest.mark.parametrize(
    ("path", "field"),
    [("/v1/shelves/%FF", "shelf"), ("/v1/files/a/%C3", "path"), ("/v1/shelves/s1/books?tags=%FF", "tags")],
    ids=["path-variable", "segments", "query"],
)
async def test_escapes_that_are_not_utf8_are_a_400_not_replaced_characters(front: Front, http, path, field) -> None:
    status, answer = await call(http, "GET", front.url + path)
    assert status == 400, answer
    assert violations(answer) == [field]


# ------------------------------------------------------------------------------------------ proto3 JSON


async def mirror(front: Front, http: aiohttp.ClientSession, body: Any) -> tuple[int, Any]:
    return await call(http, "POST", front.url + "/v1/mirror", body)


async def test_64_bit_integers_are_strings_both_ways_and_json_numbers_are_accepted(front: Front, http) -> None:
    sent = {
        "int64Value": f"-{BEYOND_DOUBLE}",
        "uint64Value": UINT64_MAX,
        "fixed64Value": BEYOND_DOUBLE,
        "sint64Value": "-9223372036854775808",
        "sfixed64Value": "9223372036854775807",
        "maybeInt64": BEYOND_DOUBLE,
        "maybeUint64": UINT64_MAX,
        "counts": {"a": "1"},
    }
    status, answer = await mirror(front, http, sent)
    assert (status, answer) == (200, sent)
    as_numbers = b'{"int64Value": 9007199254740993, "uint64Value": 18446744073709551615, "counts": {"a": 2}}'
    status, answer = await mirror(front, http, as_numbers)
    assert (status, answer) == (200, {"int64Value": BEYOND_DOUBLE, "uint64Value": UINT64_MAX, "counts": {"a": "2"}})


async def test_enums_are_read_by_name_or_number_and_written_by_name(front: Front, http) -> None:
    status, answer = await mirror(front, http, {"genre": 2, "genres": ["POETRY", 1]})
    assert (status, answer) == (200, {"genre": "HISTORY", "genres": ["POETRY", "FICTION"]})


async def test_well_known_types_keep_their_json_forms(front: Front, http) -> None:
    status, answer = await mirror(front, http, WELL_KNOWN)
    assert (status, answer) == (200, WELL_KNOWN)


async def test_bytes_maps_oneofs_and_repeated_messages(front: Front, http) -> None:
    blob = b"\xfb\xef\xff binary"
    sent = {
        "blob": base64.urlsafe_b64encode(blob).decode().rstrip("="),  # URL-safe and unpadded is read too
        "booksByNumber": {"7": {"title": "Seven"}},
        "flags": {"true": "yes", "false": "no"},
        "book": {"id": "b-1", "tags": ["x", "y"]},
        "books": [{"id": "b1"}, {"id": "b2", "pages": "3"}],
    }
    status, answer = await mirror(front, http, sent)
    assert status == 200, answer
    assert answer == {**sent, "blob": base64.b64encode(blob).decode()}  # written standard and padded


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"favourite": {"colour": "red"}}, "favourite.colour"),
        ({"books": [{"id": "b1"}, {"colour": "red"}]}, "books[1].colour"),
        ({"genre": "EPIC"}, "genre"),
        ({"int32Value": "lots"}, "int32Value"),
        ({"int32Value": 2**31}, "int32Value"),
        ({"int64Value": 1.5}, "int64Value"),
        ({"boolValue": "yes"}, "boolValue"),
        ({"at": "yesterday"}, "at"),
        ({"wait": "an hour"}, "wait"),
        ({"blob": "not base64!"}, "blob"),
        ({"books": {"id": "b1"}}, "books"),
        ({"name": "n", "number": "1"}, "choice"),
        ({"extra": {"@type": "type.googleapis.com/meshlet.mapping.v1.Nowhere"}}, "extra"),
    ],
    ids=[
        "unknown", "unknown-nested", "unknown-in-a-list", "unknown-enum", "string-for-int", "int32-overflow",
        "fraction-for-int64", "string-for-bool", "bad-timestamp", "bad-duration", "bad-bytes", "object-for-list",
        "two-of-a-oneof", "any-of-no-known-type",
    ],
)  # fmt: skip
async def test_a_body_that_breaks_the_json_mapping_is_a_400_naming_the_field(front: Front, http, body, field) -> None:
    status, answer = await mirror(front, http, body)
    assert status == 400, answer
    assert set(answer) == {"code", "message", "details"}
    assert answer["code"] == 3
    assert violations(answer) == [field], answer


# ------------------------------------------------------------------------------------------ errors

# gRPC code -> HTTP status, as the issue and README give it (grpc-gateway's table): written out, not imported.
STATUSES = {
    "CANCELLED": (1, 499),
    "UNKNOWN": (2, 500),
    "INVALID_ARGUMENT": (3, 400),
    "DEADLINE_EXCEEDED": (4, 504),
    "NOT_FOUND": (5, 404),
    "ALREADY_EXISTS": (6, 409),
    "PERMISSION_DENIED": (7, 403),
    "RESOURCE_EXHAUSTED": (8, 429),
    "FAILED_PRECONDITION": (9, 400),
    "ABORTED": (10, 409),
    "OUT_OF_RANGE": (11, 400),
    "UNIMPLEMENTED": (12, 501),
    "INTERNAL": (13, 500),
    "UNAVAILABLE": (14, 503),
    "DATA_LOSS": (15, 500),
    "UNAUTHENTICATED": (16, 401),
}


@pytest.mark.parametrize("name", list(STATUSES))
async def test_every_upstream_status_is_its_http_status_with_its_details_kept(front: Front, http, name) -> None:
    code, expected = STATUSES[name]
    message = f"failed with {name}, as asked"
    status, answer = await call(http, "POST", f"{front.url}/v1/faults/{name}", {"message": message})
    assert status == expected, answer
    assert set(answer) == {"code", "message", "details"}
    assert (answer["code"], answer["message"]) == (code, message)
    info, fault = answer["details"]
    assert info == {
        "@type": ERROR_INFO,
        "reason": "ASKED_TO_FAIL",
        "domain": "mapping.meshlet.test",
        "metadata": {"code": name},
    }
    assert fault == {"@type": FAULT_DETAIL, "hint": "as asked", "attempt": BEYOND_DOUBLE}


# ------------------------------------------------------------------------------------------ the document


async def test_the_document_of_every_rule_is_valid_openapi_and_the_answers_fit_its_schemas(front: Front, http) -> None:
    async with http.get(front.url + "/openapi.json") as response:
        document = await response.json()
    validate(document)  # a custom HTTP method too: OpenAPI 3.1 has no field for PURGE, so it is x-purge
    assert document["paths"]["/v1/cache/{key}"]["x-purge"]["x-grpc-method"] == f"/{LIBRARY}/Purge"

    def fits(answer: Any, schema: str) -> None:
        root = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
        broken = [f"{list(e.absolute_path)}: {e.message}" for e in Draft202012Validator(root).iter_errors(answer)]
        assert not broken, broken

    status, answer = await mirror(front, http, WELL_KNOWN)
    assert status == 200, answer
    fits(answer, "meshlet.mapping.v1.Everything")
    status, answer = await call(http, "POST", front.url + "/v1/faults/ABORTED", {"message": "no"})
    assert status == 409, answer
    fits(answer, "google.rpc.Status")
    status, answer = await mirror(front, http, {"colour": "red"})
    assert status == 400, answer
    fits(answer, "google.rpc.Status")


# ------------------------------------------------------------------------------------------ route conflicts


def test_two_services_on_one_verb_and_template_exit_2_naming_both_methods(front: Front, tmp_path: Path) -> None:
    config = {
        "tls": {"source": "off"},
        "consul": {"address": "http://127.0.0.1:1"},
        "edge": {
            "services": {LIBRARY: "mapping", "meshlet.mapping.v1.Shadow": "shadow"},
            "descriptor_sets": [str(front.descriptors)],
        },
    }
    with processes(tmp_path) as procs:
        child, _, _ = start_edge(procs, tmp_path, config, "edge-conflict")
        assert child.wait(START_S) == 2
    output = child.output()
    assert f"/{LIBRARY}/GetShelf" in output
    assert "/meshlet.mapping.v1.Shadow/ShadowShelf" in output
    assert "GET /v1/shelves/{name}" in output
    assert "edge.services" in output
    assert "Traceback" not in output
