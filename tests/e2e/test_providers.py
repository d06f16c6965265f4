"""Routing, fallback, cool-downs, images, tools, JSON and reasoning through the whole stack."""

from __future__ import annotations

import base64
import json
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devenv.stack import Stack
from tests.conftest import Api, StackFactory, text_task, wait_for_log
from tests.receiver import running_receiver

MODEL = "openai:gpt@5.4-mini"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
GIF = b"GIF89a" + b"\0" * 32


def catalog(*routes: str, routing: str = "ordered") -> str:
    head = f"""
[models."{MODEL}"]
name = "GPT-5.4 Mini"
context_window = 400_000
max_output_tokens = 128_000
routing = "{routing}"
price = {{ input = 0.75, cached_input = 0.075, output = 4.50 }}
"""
    return head + "".join(routes)


def route(
    name: str,
    adapter: str = "openai-chat",
    model: str = "gpt-5.4-mini",
    key_env: str = "TASKWIRE_SIM_API_KEY",
    timeout_s: float = 3,
    extra: str = "",
) -> str:
    return f"""
[[models."{MODEL}".routes]]
name = "{name}"
adapter = "{adapter}"
base_url = "${{TASKWIRE_SIM_URL}}"
model = "{model}"
api_key_env = "{key_env}"
timeout_s = {timeout_s}
{extra}
"""


def calls_by_model(stack: Stack, marker: str) -> dict[str, int]:
    found = httpx.get(f"{stack.sim_url}/_sim/calls", params={"contains": marker}).json()
    return {str(k): int(v) for k, v in found["models"].items()}


def result_line(stack: Stack, task_uuid: str) -> dict[str, Any]:
    [line] = wait_for_log(
        stack.workers[0].log_path,
        lambda line: line.get("event") == "result.finished" and line.get("task_uuid") == task_uuid,
    )
    return line


@pytest.fixture
def providers_stack(make_stack: StackFactory) -> Iterator[tuple[Stack, Api]]:
    stack = make_stack(
        catalog=catalog(
            route("sim-chat", extra='reasoning_style = "openrouter"'),
            route("sim-responses", "openai-responses"),
        )
    )
    api = Api(stack)
    yield stack, api
    api.close()


# --- fallback


@pytest.mark.parametrize(
    ("fault", "extra_timeout"),
    [("[[sim:status=429,retry_after=0]]", 3), ("[[sim:status=503]]", 3), ("[[sim:hang]]", 0.5)],
    ids=["429", "503", "timeout"],
)
def test_fallback_to_the_next_route(
    make_stack: StackFactory, fault: str, extra_timeout: float
) -> None:
    broken_model = f"gpt-5.4-mini {fault}"
    stack = make_stack(
        catalog=catalog(route("broken", model=broken_model, timeout_s=extra_timeout), route("good"))
    )
    api = Api(stack)
    marker = uuid.uuid4().hex
    task = text_task(marker)
    [item] = api.post([task]).json()["data"]
    assert item["status"] == "success"
    calls = calls_by_model(stack, marker)
    assert calls == {broken_model: 3, "gpt-5.4-mini": 1}  # three attempts, then the next route
    line = result_line(stack, task["taskUUID"])
    assert line["route"] == "good"
    assert line["routes_tried"] == ["broken", "good"]
    assert line["attempts"] == 4
    api.close()


def test_no_fallback_after_the_first_delta(make_stack: StackFactory) -> None:
    dropping = "gpt-5.4-mini [[sim:tps=40,drop_after=4]]"
    stack = make_stack(catalog=catalog(route("dropping", model=dropping), route("good")))
    api = Api(stack)
    marker = uuid.uuid4().hex
    task = text_task(marker, deliveryMethod="stream")
    with api.http.stream(
        "POST", "/v1", json=[task], headers={"Authorization": f"Bearer {api.key}"}
    ) as response:
        body = response.read().decode()
    assert '"delta":{"text"' in body  # output had started ...
    assert '"errors"' in body  # ... so the failure is reported, not hidden by a fallback
    assert calls_by_model(stack, marker) == {dropping: 1}
    [item] = api.wait_final(task["taskUUID"])
    assert item["status"] == "error"
    api.close()


def test_a_route_without_a_key_is_skipped(make_stack: StackFactory) -> None:
    stack = make_stack(
        catalog=catalog(route("keyless", key_env="NO_SUCH_PROVIDER_KEY"), route("good"))
    )
    api = Api(stack)
    task = text_task("skip me")
    assert api.post([task]).json()["data"][0]["status"] == "success"
    [skipped] = wait_for_log(
        stack.workers[0].log_path, lambda line: line.get("event") == "route.skipped"
    )
    assert skipped["route"] == "keyless"
    assert "NO_SUCH_PROVIDER_KEY is not set" in skipped["reason"]
    assert result_line(stack, task["taskUUID"])["route"] == "good"
    api.close()


def test_cheapest_first(make_stack: StackFactory) -> None:
    stack = make_stack(
        catalog=catalog(
            route("pricey", extra="price = { input = 5.0, output = 20.0 }"),
            route("cheap", "openai-responses", extra="price = { input = 0.15, output = 0.90 }"),
            route("unpriced"),
            routing="cheapest",
        )
    )
    api = Api(stack)
    tasks = [text_task(f"cheap {i}") for i in range(3)]
    for task in tasks:
        assert api.post([task]).json()["data"][0]["status"] == "success"
    assert {result_line(stack, t["taskUUID"])["route"] for t in tasks} == {"cheap"}
    api.close()


def test_cool_down_is_shared_between_workers(make_stack: StackFactory) -> None:
    failing = "gpt-5.4-mini [[sim:status=500]]"
    stack = make_stack(
        catalog=catalog(route("only", model=failing)),
        env={"TASKWIRE_ROUTE_FAILURE_THRESHOLD": "2", "TASKWIRE_ROUTE_COOLDOWN_S": "60"},
    )
    api = Api(stack)
    marker = uuid.uuid4().hex
    for i in range(2):  # two results fail on the first worker: the route rests
        [item] = api.post([text_task(f"{marker} {i}")]).json()["data"]
        assert item["error"]["code"] == "inferenceError"
    wait_for_log(stack.workers[0].log_path, lambda line: line.get("event") == "route.cooling_down")
    second = stack.start_worker()
    stack.workers[0].signal(signal.SIGSTOP)  # only the second worker can take the next task
    try:
        task = text_task(f"{marker} after")
        [item] = api.post([task]).json()["data"]
        assert item["error"]["code"] == "noAvailableServer"
        assert "resting" in item["error"]["message"]
        assert calls_by_model(stack, f"{marker} after") == {}  # never sent to the provider
        [line] = wait_for_log(
            second.log_path,
            lambda line: (
                line.get("task_uuid") == task["taskUUID"] and line.get("event") == "result.finished"
            ),
        )
        assert line["status"] == "error"
    finally:
        stack.workers[0].signal(signal.SIGCONT)
    api.close()


# --- tools, JSON, reasoning, cached tokens, through each kind of route


@pytest.mark.parametrize("route_name", ["sim-chat", "sim-responses"])
def test_tool_call_round_trip(make_stack: StackFactory, route_name: str) -> None:
    adapter = "openai-chat" if route_name == "sim-chat" else "openai-responses"
    stack = make_stack(catalog=catalog(route(route_name, adapter)))
    api = Api(stack)
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather by city",
            "schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    first = text_task("call get_weather city=Oslo", tools=tools)
    [item] = api.post([first]).json()["data"]
    assert item["finishReason"] == "tool_calls"
    [call] = item["toolCalls"]
    assert call["name"] == "get_weather" and call["input"] == {"city": "Oslo"}
    follow_up = text_task(
        "x",
        tools=tools,
        messages=[
            {"role": "user", "content": "call get_weather city=Oslo"},
            {"role": "assistant", "tools": [call]},
            {"role": "tool", "id": call["id"], "content": "sunny, 21 C"},
        ],
    )
    [answer] = api.post([follow_up]).json()["data"]
    assert answer["status"] == "success" and answer["finishReason"] == "stop"
    assert answer["text"] and "toolCalls" not in answer
    api.close()


def test_json_reasoning_and_cached_pricing(providers_stack: tuple[Stack, Api]) -> None:
    _, api = providers_stack
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    }
    [item] = api.post(
        [text_task("json city=Rome days=3", outputFormat="JSON", jsonSchema=schema)]
    ).json()["data"]
    assert json.loads(item["text"]) == {"city": "Rome", "days": 3}
    [item] = api.post(
        [
            text_task(
                "think [[sim:cached=40,tokens=10]] " + "word " * 60,
                settings={"thinkingLevel": "high"},
                includeUsage=True,
                includeCost=True,
            )
        ]
    ).json()["data"]
    usage = item["usage"]
    assert usage["thinkingTokens"] == 16
    assert item["reasoningContent"]
    assert usage["cachedTokens"] == 40
    expected = (
        (usage["promptTokens"] - 40) * 0.75 + 40 * 0.075 + usage["completionTokens"] * 4.50
    ) / 1e6
    assert item["cost"] == pytest.approx(expected)


# --- images


def test_image_inputs_in_every_form(make_stack: StackFactory) -> None:
    stack = make_stack(
        catalog=catalog(route("sim-chat"), route("passing", extra='image_urls = "pass"')),
        env={"TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8"},
    )
    api = Api(stack)
    upload = api.post(
        [
            {
                "taskType": "imageUpload",
                "taskUUID": str(uuid.uuid4()),
                "image": "data:image/gif;base64," + base64.b64encode(GIF).decode(),
            }
        ]
    )
    [uploaded] = upload.json()["data"]
    assert f"/v1/images/{uploaded['imageUUID']}.gif?token=" in uploaded["imageURL"]
    served = api.http.get(uploaded["imageURL"])  # signed: no key needed
    assert served.content == GIF and served.headers["content-type"] == "image/gif"
    marker = uuid.uuid4().hex
    images = [
        uploaded["imageUUID"],
        "data:image/png;base64," + base64.b64encode(PNG).decode(),
        base64.b64encode(PNG).decode(),
    ]
    [item] = api.post([text_task(marker, inputs={"images": images})]).json()["data"]
    assert item["status"] == "success"
    found = httpx.get(f"{stack.sim_url}/_sim/calls", params={"contains": marker}).json()
    sent = found["last"]["images"]
    assert [(i["kind"], i["mime"], i["bytes"]) for i in sent] == [
        ("data", "image/gif", len(GIF)),
        ("data", "image/png", len(PNG)),
        ("data", "image/png", len(PNG)),
    ]
    api.close()


def test_image_urls_fetched_or_passed(make_stack: StackFactory) -> None:
    with running_receiver() as receiver:
        stack = make_stack(
            catalog=catalog(route("sim-chat")), env={"TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8"}
        )
        api = Api(stack)
        url = receiver.answer("/image.png", (200, {}, 0, PNG))
        marker = uuid.uuid4().hex
        [item] = api.post([text_task(marker, inputs={"images": [url]})]).json()["data"]
        assert item["status"] == "success"
        sent = httpx.get(f"{stack.sim_url}/_sim/calls", params={"contains": marker}).json()
        assert sent["last"]["images"] == [
            {"kind": "data", "mime": "image/png", "bytes": len(PNG), "url": None}
        ]
        assert len(receiver.requests("/image.png")) == 1  # fetched by the worker
        # a URL that does not serve an image: fetched, then refused by content
        not_image = receiver.answer("/not-image.png", (200, {}, 0, b"<html>nope</html>"))
        [item] = api.post([text_task("x", inputs={"images": [not_image]})]).json()["data"]
        assert item["status"] == "error" and item["error"]["code"] == "invalidImages"
        assert "not a jpeg, png" in item["error"]["message"]
        api.close()
    passing = make_stack(
        catalog=catalog(route("passing", extra='image_urls = "pass"')),
        env={"TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8"},
    )
    api = Api(passing)
    marker = uuid.uuid4().hex
    url = "http://127.0.0.1:9/never-fetched.png"
    [item] = api.post([text_task(marker, inputs={"images": [url]})]).json()["data"]
    assert item["status"] == "success"
    sent = httpx.get(f"{passing.sim_url}/_sim/calls", params={"contains": marker}).json()
    assert sent["last"]["images"] == [{"kind": "url", "mime": None, "bytes": None, "url": url}]
    api.close()


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (base64.b64encode(b"%PDF-1.4 not an image").decode(), "not a jpeg, png"),
        ("data:image/png;base64,@@@", "not valid base64"),
        ("data:image/png," + "x", "must be base64-encoded"),
        ("http://169.254.169.254/latest/meta-data/x.png", "link-local"),
        ("http://10.0.0.5/x.png", "private"),
        (str(uuid.uuid4()), "no such imageUUID"),
    ],
)
def test_image_refusals(providers_stack: tuple[Stack, Api], image: str, reason: str) -> None:
    _, api = providers_stack
    response = api.post([text_task(inputs={"images": ["iVBORw0KGgo=", image]})])
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["code"] == "invalidImages"
    assert error["parameter"] in ("inputs.images.0", "inputs.images.1")
    assert reason in error["message"] or "not a jpeg" in error["message"]


def test_image_too_large_and_bad_uploads(make_stack: StackFactory) -> None:
    stack = make_stack(catalog=catalog(route("sim-chat")), env={"TASKWIRE_IMAGE_MAX_BYTES": "2048"})
    api = Api(stack)
    big = base64.b64encode(PNG + b"\0" * 4096).decode()
    response = api.post([text_task(inputs={"images": [big]})])
    assert response.status_code == 400
    assert "larger than 2048 bytes" in response.json()["errors"][0]["message"]
    response = api.post(
        [
            {
                "taskType": "imageUpload",
                "taskUUID": str(uuid.uuid4()),
                "image": base64.b64encode(b"plain text").decode(),
            }
        ]
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "invalidImage"
    api.close()
