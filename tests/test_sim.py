"""The simulator speaks OpenAI Chat Completions well enough for the official SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from devenv.procs import Process, child_env, free_port, http_ok, python_argv, wait_until
from sim.app import UPSTREAM_SECRET_MARKER

SIM_KEY = "sim-test-key"


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = Process(
        "sim",
        python_argv("-m", "sim", "--port", str(port), "--api-key", SIM_KEY),
        child_env({}),
        tmp_path_factory.mktemp("sim"),
    ).start()
    url = f"http://127.0.0.1:{port}"
    wait_until(http_ok(f"{url}/health"), 20, "the simulator", proc.check_alive)
    yield url
    proc.stop()


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
