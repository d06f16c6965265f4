"""OpenAI's own Python SDK (`openai`, unmodified, `base_url` pointed at taskwire) against the
real stack: Chat Completions (create, stream with usage, n with seeds, a tool round trip,
JSON schema, images, errors, Idempotency-Key retries) and the Responses API (create,
stream, background with retrieve, resumed stream and cancel). Every request is a taskwire
task: getResponse shows the same results."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from devenv.stack import Stack
from tests.conftest import KEY_A, MODEL, final_items

pytestmark = pytest.mark.timeout(90)

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
PNG_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def client(stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{stack.api_url}/v1", api_key=KEY_A, max_retries=0) as sdk:
        yield sdk


def user(prompt: str) -> list[Any]:
    return [{"role": "user", "content": prompt}]


# --- chat completions


def test_create_is_a_task(client: OpenAI, stack: Stack) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "openai create [[sim:tokens=6]]"},
        ],
        temperature=0.5,
        top_p=0.9,
        max_tokens=100,
        stop=["zzz"],
        user="someone",
        metadata={"a": "b"},
    )
    completion = raw.parse()
    task_uuid = raw.headers["x-taskwire-task-uuid"]
    assert completion.id == f"chatcmpl-{task_uuid}"
    assert completion.object == "chat.completion"
    [choice] = completion.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    [item] = final_items(stack, task_uuid)
    assert item["text"] == choice.message.content
    assert item["usage"]["completionTokens"] == completion.usage.completion_tokens


def test_stream_with_usage(client: OpenAI, stack: Stack) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=user("openai stream [[sim:tokens=30]]"),
        stream=True,
        stream_options={"include_usage": True},
    )
    task_uuid = raw.headers["x-taskwire-task-uuid"]
    chunks = list(raw.parse())
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.total_tokens > 0
    [item] = final_items(stack, task_uuid)
    assert item["text"] == text and len(chunks) > 3


def test_stream_without_usage(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=user("openai stream plain [[sim:tokens=5]]"), stream=True
        )
    )
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_n_results_with_seeds(client: OpenAI, stack: Stack) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=user("openai n [[sim:tokens=8]]"), n=3, seed=40
    )
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1, 2]
    items = final_items(stack, raw.headers["x-taskwire-task-uuid"])
    assert [item["seed"] for item in items] == [40, 41, 42]
    assert [c.message.content for c in completion.choices] == [item["text"] for item in items]
    again = client.chat.completions.create(
        model=MODEL, messages=user("openai n [[sim:tokens=8]]"), n=3, seed=40
    )
    assert [c.message.content for c in again.choices] == [item["text"] for item in items]


def test_n_streamed(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=user("openai n stream [[sim:tokens=8]]"), n=2, stream=True
        )
    )
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_tool_round_trip(client: OpenAI) -> None:
    messages: list[Any] = user("Please call get_weather city=Oslo")
    first = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="auto"
    )
    [choice] = first.choices
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp": 12}'})
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content


def test_forced_tool_streamed(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=user("weather city=Bergen"),
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
        )
    )
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [call.function.name for call in calls if call.function] == ["get_weather"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_json_schema(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=user("a person name=Ada age=36"),
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "person",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                    "required": ["name", "age"],
                },
            },
        },
    )
    assert json.loads(completion.choices[0].message.content or "") == {"name": "Ada", "age": 36}
    plain = client.chat.completions.create(
        model=MODEL, messages=user("any json"), response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(plain.choices[0].message.content or ""), dict)


def test_image_parts(client: OpenAI) -> None:
    def prompt_tokens(content: Any) -> int:
        completion = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}]
        )
        assert completion.usage is not None
        return completion.usage.prompt_tokens

    text = {"type": "text", "text": "what is in the picture"}
    image = {"type": "image_url", "image_url": {"url": PNG_URI, "detail": "low"}}
    without = prompt_tokens([text])
    assert prompt_tokens([text, image, image]) >= without + 2 * 85


def test_errors(client: OpenAI, stack: Stack) -> None:
    bad = OpenAI(base_url=f"{stack.api_url}/v1", api_key="nope", max_retries=0)
    with bad, pytest.raises(openai.AuthenticationError) as auth:
        bad.chat.completions.create(model=MODEL, messages=user("hi"))
    assert auth.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as wrong:
        client.chat.completions.create(model=MODEL, messages=user("hi"), temperature=5)
    assert wrong.value.param == "temperature" and wrong.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as many:
        client.chat.completions.create(model=MODEL, messages=user("hi"), n=9)
    assert many.value.param == "n"
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(
            model=MODEL, messages=user("hi"), extra_body={"frobnicate": 1}
        )
    assert unknown.value.param == "frobnicate" and unknown.value.code == "unknown_parameter"
    with pytest.raises(openai.BadRequestError) as arguments:
        client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "[1]"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "x"},
            ],
        )
    assert arguments.value.param == "messages.1.tool_calls.0.function.arguments"
    with pytest.raises(openai.NotFoundError) as model:
        client.chat.completions.create(model="nobody:nothing@1", messages=user("hi"))
    assert model.value.code == "model_not_found" and model.value.param == "model"
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model=MODEL, messages=user("boom [[sim:status=400]]"))
    assert failed.value.status_code == 502


def test_idempotency_key(client: OpenAI) -> None:
    key = {"Idempotency-Key": f"retry-{uuid.uuid4()}"}
    messages = user("openai idempotent [[sim:tokens=12]]")
    first = client.chat.completions.create(model=MODEL, messages=messages, extra_headers=key)
    again = client.chat.completions.create(model=MODEL, messages=messages, extra_headers=key)
    assert again.id == first.id
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.created == first.created
    streamed = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            stream=True,
            extra_headers={"Idempotency-Key": key["Idempotency-Key"] + "-s"},
        )
    )
    assert streamed
    with pytest.raises(openai.ConflictError) as conflict:
        client.chat.completions.create(
            model=MODEL, messages=user("another body"), extra_headers=key
        )
    assert conflict.value.code == "idempotency_key_conflict"


# --- responses


def test_response_create_is_a_task(client: OpenAI, stack: Stack) -> None:
    raw = client.responses.with_raw_response.create(
        model=MODEL,
        input="openai responses create [[sim:tokens=7]]",
        instructions="Be brief.",
        max_output_tokens=300,
        temperature=0.3,
    )
    response = raw.parse()
    task_uuid = raw.headers["x-taskwire-task-uuid"]
    assert response.id == "resp_" + task_uuid.replace("-", "")
    assert response.status == "completed" and response.object == "response"
    assert response.instructions == "Be brief." and response.max_output_tokens == 300
    assert response.output_text
    assert response.usage is not None and response.usage.output_tokens > 0
    [item] = final_items(stack, task_uuid)
    assert item["text"] == response.output_text
    assert client.responses.retrieve(response.id).output_text == response.output_text


def test_response_stream(client: OpenAI) -> None:
    events = list(
        client.responses.create(
            model=MODEL, input="openai responses stream [[sim:tokens=30,reasoning=6]]", stream=True
        )
    )
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert text and final.output_text == text
    assert "response.reasoning_summary_text.delta" in kinds
    assert [item.type for item in final.output] == ["reasoning", "message"]


def test_background_retrieve_resume_and_cancel(client: OpenAI) -> None:
    from devenv.procs import wait_until

    slow = "openai background [[sim:tokens=40,tps=40]]"
    created = client.responses.create(model=MODEL, input=slow, background=True)
    assert created.status in ("queued", "in_progress") and created.background is True
    live = list(client.responses.retrieve(created.id, stream=True))
    assert live[-1].type == "response.completed"
    assert [event.sequence_number for event in live] == list(range(len(live)))
    done = client.responses.retrieve(created.id)
    assert done.status == "completed" and done.output_text == live[-1].response.output_text  # type: ignore[union-attr]
    resumed = list(client.responses.retrieve(created.id, stream=True, starting_after=5))
    assert [e.model_dump() for e in resumed] == [e.model_dump() for e in live[6:]]

    hanging = client.responses.create(
        model=MODEL, input="openai cancel [[sim:tokens=400,tps=20]]", background=True
    )
    wait_until(
        lambda: client.responses.retrieve(hanging.id).status == "in_progress",
        20,
        "the background response to start",
    )
    cancelled = client.responses.cancel(hanging.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(hanging.id).status == "cancelled"
    tail = list(client.responses.retrieve(hanging.id, stream=True))
    assert tail[-1].response.status == "cancelled"  # type: ignore[union-attr]
    assert client.responses.cancel(hanging.id).status == "cancelled"  # again: the same


def test_response_tool_round_trip_and_schema(client: OpenAI) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": WEATHER["function"]["parameters"],
        "strict": True,
    }
    first = client.responses.create(
        model=MODEL, input="Please call get_weather city=Oslo", tools=[tool]
    )
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    second = client.responses.create(
        model=MODEL,
        tools=[tool],
        input=[
            {"role": "user", "content": "Please call get_weather city=Oslo"},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": '{"t": 3}'},
        ],
    )
    assert second.status == "completed" and second.output_text
    shaped = client.responses.create(
        model=MODEL,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "a city name=Oslo"},
                    {"type": "input_image", "image_url": PNG_URI},
                ],
            }
        ],
        text={
            "format": {
                "type": "json_schema",
                "name": "city",
                "schema": {"type": "object", "properties": {"name": {"type": "string"}}},
            }
        },
    )
    assert json.loads(shaped.output_text) == {"name": "Oslo"}
    assert shaped.usage is not None and shaped.usage.input_tokens >= 85


def test_response_errors(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as wrong:
        client.responses.create(model=MODEL, input="hi", temperature=7)
    assert wrong.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as item:
        client.responses.create(
            model=MODEL, input=[{"role": "user", "content": "hi"}, {"role": "robot"}]
        )
    assert item.value.param == "input.1.role"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_" + uuid.uuid4().hex)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nothing")
    key = {"Idempotency-Key": f"r-{uuid.uuid4()}"}
    first = client.responses.create(model=MODEL, input="idem", extra_headers=key)
    assert client.responses.create(model=MODEL, input="idem", extra_headers=key).id == first.id
    with pytest.raises(openai.ConflictError):
        client.responses.create(model=MODEL, input="other", extra_headers=key)


def test_errors_from_the_framework_take_openais_shape_on_its_paths(stack: Stack) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {KEY_A}"}
    # a wrong method (405) and a bad path (404) on the OpenAI door: OpenAI's error shape
    for method, path, status in (
        ("GET", "/v1/chat/completions", 405),
        ("DELETE", "/v1/responses", 405),
    ):
        answer = httpx.request(method, f"{stack.api_url}{path}", headers=auth, timeout=10)
        assert answer.status_code == status
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    # the Runware door keeps its own shape
    answer = httpx.get(f"{stack.api_url}/v1/webhooks/secret/rotate", headers=auth, timeout=10)
    assert answer.status_code == 405 and "errors" in answer.json()
