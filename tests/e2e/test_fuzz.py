"""Property-based fuzzing of every route against the real stack: hostile JSON, raw bytes and
garbled paths never get a 5xx, a hang, or a 4xx outside the protocol's JSON error shape."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import KEY_A, MODEL

# Bounded and reproducible: a fixed sequence of examples per route family, no example
# database, no per-example deadline (the stack is shared with other tests on two cores).
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CLIENT_TIMEOUT_S = 15.0  # a hang fails the example (httpx raises)
AUTH = {"Authorization": f"Bearer {KEY_A}"}


@pytest.fixture(scope="module")
def http(stack: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, timeout=CLIENT_TIMEOUT_S) as client:
        yield client


def check(response: httpx.Response) -> None:
    """The protocol's promise for any request: no 5xx, no redirect, JSON errors on 4xx."""
    status = response.status_code
    assert status < 500, f"{status}: {response.text[:500]}"
    assert not 300 <= status < 400, f"{status}: {response.headers}"
    if status >= 400:
        assert response.headers["content-type"].startswith("application/json"), response.text
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("errors"), list), body
        assert body["errors"], body
        for error in body["errors"]:
            assert isinstance(error.get("code"), str) and error["code"], error
            assert isinstance(error.get("message"), str), error


# --- strategies

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
TASK_FIELDS = [
    "taskType",
    "taskUUID",
    "model",
    "messages",
    "deliveryMethod",
    "numberResults",
    "seed",
    "includeCost",
    "includeUsage",
    "webhookURL",
    "inputs",
    "settings",
    "tools",
    "toolChoice",
    "outputFormat",
    "jsonSchema",
    "providerSettings",
    "unknownField",
]
SETTINGS_FIELDS = [
    "systemPrompt",
    "temperature",
    "topP",
    "maxTokens",
    "stopSequences",
    "thinkingLevel",
    "tools",
    "toolChoice",
]


def base_task() -> dict[str, Any]:
    """A valid, quick task (one simulated token, acknowledged at once) with a fresh UUID."""
    return {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "messages": [{"role": "user", "content": "[[sim:tokens=1]] fuzz"}],
        "deliveryMethod": "async",
    }


mutations = st.lists(
    st.tuples(st.sampled_from(TASK_FIELDS), json_values)
    | st.tuples(st.sampled_from(["settings." + name for name in SETTINGS_FIELDS]), json_values)
    | st.tuples(st.just("delete"), st.sampled_from(TASK_FIELDS)),
    min_size=1,
    max_size=3,
)


def mutated(changes: list[tuple[str, Any]]) -> dict[str, Any]:
    task = base_task()
    for field, value in changes:
        if field == "delete":
            task.pop(value, None)
        elif field.startswith("settings."):
            settings_ = task.get("settings")
            task["settings"] = {**(settings_ if isinstance(settings_, dict) else {})}
            task["settings"][field.removeprefix("settings.")] = value
        else:
            task[field] = value
    if task.get("deliveryMethod") in ("sync", "stream"):
        task["deliveryMethod"] = "async"  # no waiting on inference in bulk
    return task


def nested(depth: int, kind: str) -> str:
    if kind == "object":
        return '{"a":' * depth + "1" + "}" * depth
    return "[" * depth + "1" + "]" * depth


HOSTILE_FRAGMENTS = st.sampled_from(
    [
        '"\\ud800"',
        '"\\udfff"',
        '"\\udc00\\ud800"',
        '"ok\\u0000"',
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        "123456789012345678901234567890",
        "1.5e308",
        "-0",
        "true",
        "null",
        '"' + "x" * 5000 + '"',
    ]
)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    """A task body with something hostile spliced into a field (as raw JSON text)."""
    task = base_task()
    field = draw(
        st.sampled_from(["taskType", "taskUUID", "model", "providerSettings", "jsonSchema", "seed"])
    )
    choice = draw(st.integers(0, 2))
    if choice == 0:
        fragment = draw(HOSTILE_FRAGMENTS)
    else:
        depth = draw(st.integers(1, 1500))
        fragment = nested(depth, draw(st.sampled_from(["object", "array"])))
        if field == "jsonSchema":
            task["outputFormat"] = "JSON"
    task.pop(field, None)
    text = json.dumps([task])
    return (text[:-2] + f', "{field}": {fragment}}}]').encode()


raw_bytes = st.binary(max_size=300) | st.builds(
    lambda head, tail: head + tail,
    st.sampled_from([b"[", b"{", b'[{"taskType":', b'{"taskType":"getResponse","taskUUID":']),
    st.binary(max_size=100),
)

path_segments = (
    st.text(max_size=60)
    | st.uuids().map(str)
    | st.uuids().map(lambda u: str(u).upper())
    | st.sampled_from(["..", ".", "%", "a" * 300, "\x00", "\ud800"])
)


def seg(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


headers = st.sampled_from(
    [
        {},
        AUTH,
        {"Authorization": "Bearer x"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer " + "x" * 600},
        {"Authorization": f"bearer {KEY_A}"},
    ]
)


# --- POST /v1


@FUZZ
@given(changes=mutations)
def test_post_mutated_tasks(http: httpx.Client, changes: list[tuple[str, Any]]) -> None:
    check(http.post("/v1", json=[mutated(changes)], headers=AUTH))


@FUZZ
@given(body=json_values | st.lists(json_values, max_size=3), auth=headers)
def test_post_arbitrary_json(http: httpx.Client, body: Any, auth: dict[str, str]) -> None:
    check(http.post("/v1", json=body, headers=auth))


@FUZZ
@given(body=hostile_bodies() | raw_bytes, path=st.sampled_from(["/v1", "/v1/"]))
def test_post_hostile_bytes(http: httpx.Client, body: bytes, path: str) -> None:
    response = http.post(path, content=body, headers={**AUTH, "Content-Type": "application/json"})
    check(response)


# --- the other routes


@FUZZ
@given(
    task=path_segments,
    after=st.none() | st.text(max_size=30),
    token=st.none() | st.text(max_size=80),
    auth=headers,
)
def test_task_events(
    http: httpx.Client, task: str, after: str | None, token: str | None, auth: dict[str, str]
) -> None:
    params = {k: v for k, v in {"after": after, "token": token}.items() if v is not None}
    clean = {
        k: v.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for k, v in params.items()
    }
    check(http.get(f"/v1/tasks/{seg(task)}/events", params=clean, headers=auth))


@FUZZ
@given(
    task=path_segments,
    index=st.none() | st.integers(-(2**70), 2**70).map(str) | st.text(max_size=10),
    auth=headers,
)
def test_redeliver(http: httpx.Client, task: str, index: str | None, auth: dict[str, str]) -> None:
    params = {} if index is None else {"resultIndex": index.encode("utf-8", "replace").decode()}
    check(http.post(f"/v1/tasks/{seg(task)}/webhooks/redeliver", params=params, headers=auth))


@FUZZ
@given(
    route=st.sampled_from(
        ["/v1/models", "/v1/webhooks/secret", "/health", "/playground", "/v1/images/"]
    ),
    name=path_segments,
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    auth=headers,
    trailing=st.booleans(),
)
def test_other_routes(
    http: httpx.Client, route: str, name: str, method: str, auth: dict[str, str], trailing: bool
) -> None:
    path = route + seg(name) if route.endswith("/") else route + ("/" if trailing else "")
    check(http.request(method, path, headers=auth))
