"""The simulator speaks OpenAI Chat Completions well enough for the official SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from sim.app import UPSTREAM_SECRET_MARKER
from tests.conftest import SIM_KEY


@pytest.fixture
def client(sim_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{sim_url}/v1", api_key=SIM_KEY, max_retries=0) as sdk:
        yield sdk


def test_sdk_parses_a_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-5.4-mini",
        messages=[{"role": "user", "content": "Hello"}],
        seed=1,
        n=2,
    )
    assert completion.object == "chat.completion"
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content != completion.choices[1].message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 48  # 24 tokens per choice
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 48


def test_sdk_parses_a_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-5.4-mini",
        messages=[{"role": "user", "content": "Hello"}],
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 24
    # same seed, same prompt: the same text as the non-streamed answer
    whole = client.chat.completions.create(
        model="gpt-5.4-mini", messages=[{"role": "user", "content": "Hello"}], seed=1
    )
    assert text == whole.choices[0].message.content


def test_max_tokens_and_max_completion_tokens_cut_with_length(client: openai.OpenAI) -> None:
    for limit in ({"max_tokens": 3}, {"max_completion_tokens": 3}):
        completion = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "Hi"}],
            **limit,  # type: ignore[arg-type]
        )
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 3


def test_stop_sequences(client: openai.OpenAI) -> None:
    whole = (
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "stops"}], seed=4
        )
        .choices[0]
        .message.content
    )
    assert whole is not None
    stop = " " + whole.split(" ")[2]
    cut = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "stops"}], seed=4, stop=[stop]
    ).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == whole[: whole.index(stop)]


def test_bearer_auth(sim_url: str) -> None:
    with (
        openai.OpenAI(base_url=f"{sim_url}/v1", api_key="wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    response = httpx.post(f"{sim_url}/v1/chat/completions", json={"model": "m"})
    assert response.status_code == 401


def test_injected_status_with_retry_after(client: openai.OpenAI, sim_url: str) -> None:
    response = httpx.post(
        f"{sim_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {SIM_KEY}"},
        json={
            "model": "m",
            "messages": [{"role": "user", "content": "[[sim:status=429,retry_after=7]]"}],
        },
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert UPSTREAM_SECRET_MARKER in response.json()["error"]["message"]
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "[[sim:status=429]]"}]
        )


def test_fail_count_then_success(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "flaky-1 [[sim:status=503,fail=2]]"}]
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
    assert client.chat.completions.create(model="m", messages=messages).choices  # type: ignore[arg-type]


def test_dropped_stream_breaks_the_response(sim_url: str) -> None:
    body = {
        "model": "m",
        "stream": True,
        "messages": [{"role": "user", "content": "[[sim:drop_after=3]]"}],
    }
    lines: list[str] = []

    def read_all() -> None:
        with httpx.stream(
            "POST",
            f"{sim_url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {SIM_KEY}"},
        ) as response:
            lines.extend(response.iter_lines())

    with pytest.raises(httpx.RemoteProtocolError):
        read_all()
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    contents = [d["choices"][0]["delta"].get("content") for d in data]
    assert len([c for c in contents if c]) == 3
    assert "data: [DONE]" not in lines


def test_hang_never_answers(sim_url: str) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{sim_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {SIM_KEY}"},
            json={"model": "m", "messages": [{"role": "user", "content": "[[sim:hang]]"}]},
            timeout=httpx.Timeout(5.0, read=0.5),
        )


def test_bad_requests_get_openai_errors(sim_url: str) -> None:
    headers = {"Authorization": f"Bearer {SIM_KEY}"}
    response = httpx.post(f"{sim_url}/v1/chat/completions", headers=headers, content=b"{")
    assert response.status_code == 400
    response = httpx.post(
        f"{sim_url}/v1/chat/completions",
        headers=headers,
        json={"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 99},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_sdk_parses_a_responses_answer(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="gpt-5.4-mini",
        instructions="Be brief",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}],
        max_output_tokens=5,
        reasoning={"effort": "low"},
        extra_body={"seed": 3},
    )
    assert response.object == "response"
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert len(response.output_text.split()) == 5
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 4
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message"]


def test_sdk_parses_a_responses_stream(client: openai.OpenAI) -> None:
    stream = client.responses.create(
        model="gpt-5.4-mini",
        input="Hello [[sim:tokens=6,cached=1]]",
        stream=True,
        extra_body={"seed": 3},
    )
    events = list(stream)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].type == "response.completed"
    completed = events[-1].response
    assert completed.output_text == text
    assert len(text.split()) == 6
    assert completed.usage is not None
    assert completed.usage.input_tokens_details.cached_tokens == 1
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(numbers)


def test_tool_call_when_offered_and_asked(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    completion = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "call get_weather city=Oslo"}],
        tools=tools,  # type: ignore[arg-type]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    # not asked: a normal answer
    plain = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "weather?"}],
        tools=tools,  # type: ignore[arg-type]
    )
    assert plain.choices[0].finish_reason == "stop"
    # streamed, in fragments the SDK can assemble
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "call get_weather city=Rome"}],
        tools=tools,
        stream=True,  # type: ignore[arg-type]
    )
    fragments = "".join(
        (c.choices[0].delta.tool_calls or [None])[0].function.arguments or ""  # type: ignore[union-attr]
        for c in stream
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert json.loads(fragments) == {"city": "Rome"}


def test_json_output_and_schema(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "json please"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(plain.choices[0].message.content or ""), dict)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}}}
    shaped = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "json n=7"}],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    document = json.loads(shaped.choices[0].message.content or "")
    assert document["n"] == 7 and isinstance(document["ok"], bool)


def test_reasoning_deltas_openrouter_style(sim_url: str) -> None:
    body = {
        "model": "m",
        "stream": True,
        "reasoning": {"effort": "high"},
        "messages": [{"role": "user", "content": "think"}],
    }
    with httpx.stream(
        "POST",
        f"{sim_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {SIM_KEY}"},
    ) as response:
        chunks = [
            json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")
        ]
    reasoning = [
        c["choices"][0]["delta"]["reasoning"]
        for c in chunks
        if c["choices"] and "reasoning" in c["choices"][0]["delta"]
    ]
    assert len(reasoning) == 16


def test_images_are_read_and_counted(sim_url: str) -> None:
    import base64

    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 100).decode()
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "images-1 what is this"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ],
    }
    response = httpx.post(
        f"{sim_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {SIM_KEY}"}
    )
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == 4 + 2 * 85
    last = httpx.get(f"{sim_url}/_sim/calls", params={"contains": "images-1"}).json()["last"]
    assert last["images"] == [
        {"kind": "data", "mime": "image/png", "bytes": 108, "url": None},
        {"kind": "url", "mime": None, "bytes": None, "url": "https://example.com/cat.jpg"},
    ]
    body["messages"][0]["content"][1]["image_url"]["url"] = "data:image/png;base64,!!"
    assert (
        httpx.post(
            f"{sim_url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {SIM_KEY}"},
        ).status_code
        == 400
    )


def test_segmind_endpoint(sim_url: str) -> None:
    body = {"messages": [{"role": "user", "content": "tell me a joke"}]}
    response = httpx.post(f"{sim_url}/v1/gpt-5.4-mini", json=body, headers={"x-api-key": SIM_KEY})
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"
    assert float(response.headers["x-remaining-credits"]) < 1000
    assert httpx.post(f"{sim_url}/v1/gpt-5.4-mini", json=body).status_code == 401
    assert httpx.get(f"{sim_url}/v1/gpt-5.4-mini").status_code == 405
    broke = {"messages": [{"role": "user", "content": "[[sim:status=406]]"}]}
    assert (
        httpx.post(
            f"{sim_url}/v1/gpt-5.4-mini", json=broke, headers={"x-api-key": SIM_KEY}
        ).status_code
        == 406
    )


def test_runware_style_endpoint(sim_url: str) -> None:
    task = {
        "taskType": "textInference",
        "taskUUID": "8f0c7d1e-3a5b-4c2d-9e8f-7a6b5c4d3e2f",
        "model": "openai:gpt@5.4-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "deliveryMethod": "stream",
        "includeUsage": True,
        "seed": 1,
    }
    with httpx.stream(
        "POST", f"{sim_url}/v1", json=[task], headers={"Authorization": f"Bearer {SIM_KEY}"}
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    final = json.loads(lines[-2][6:])
    assert final["finishReason"] == "stop" and final["usage"]["completionTokens"] == 24
    sync = httpx.post(
        f"{sim_url}/v1",
        json=[
            {"taskType": "authentication", "apiKey": SIM_KEY},
            {**task, "deliveryMethod": "sync"},
        ],
    )
    assert sync.status_code == 200
    assert sync.json()["data"][0]["status"] == "success"
