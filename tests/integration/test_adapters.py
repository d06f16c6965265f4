"""Each upstream adapter against the simulator over real HTTP: every mapped setting reaches
the upstream in its own dialect, streams parse, usage is read, and each error class maps."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest

from core.catalog import Route
from core.errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamStreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from core.protocol import TextInferenceTask
from devenv.procs import free_port
from sim.app import UPSTREAM_SECRET_MARKER
from tests.conftest import SIM_KEY
from worker.providers.base import (
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamCall,
    UsageReport,
    error_for_transport,
)
from worker.providers.openai_chat import chat_adapter
from worker.providers.openai_responses import responses_adapter
from worker.providers.runware import runware_adapter
from worker.providers.segmind import SegmindAdapter
from worker.providers.transport import ProviderTransport, translate
from worker.result import ResultAssembler

KEY = SIM_KEY
PNG = (
    "data:image/png;base64,"
    + __import__("base64").b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()
)

ADAPTERS = {
    "openai-chat": chat_adapter(),
    "openai-responses": responses_adapter(),
    "segmind": SegmindAdapter(),
    "runware": runware_adapter(),
}


@pytest.fixture(scope="module")
def sim(sim_url: str) -> str:
    return sim_url


TRANSPORTS = ["httpx", "aiohttp"]  # httpx's own, and the worker's (ProviderTransport)


def provider_client(transport: str, **kwargs: Any) -> httpx.AsyncClient:
    if transport == "aiohttp":
        limits = httpx.Limits(max_connections=10)
        options = (
            {"trace_configs": kwargs.pop("trace_configs")} if "trace_configs" in kwargs else {}
        )
        return httpx.AsyncClient(transport=ProviderTransport(limits=limits, **options), **kwargs)
    kwargs.pop("trace_configs", None)
    return httpx.AsyncClient(**kwargs)


@pytest.fixture(params=TRANSPORTS)
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    async with provider_client(request.param) as http:
        yield http


def route(sim: str, adapter: str, **options: Any) -> Route:
    model = "openai:gpt@5.4-mini" if adapter == "runware" else "gpt-5.4-mini"
    return Route(
        name=f"t-{adapter}",
        adapter=adapter,
        base_url=f"{sim}/v1",
        model=model,
        api_key_env="X",
        timeout_s=options.pop("timeout_s", 5),
        **options,
    )


def task(prompt: str, **fields: Any) -> TextInferenceTask:
    raw = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "openai:gpt@5.4-mini",
        "messages": [{"role": "user", "content": prompt}],
    }
    raw.update(fields)
    return TextInferenceTask.model_validate(raw)


async def run(client: httpx.AsyncClient, call: UpstreamCall) -> list[Any]:
    return [event async for event in ADAPTERS[call.route.adapter].stream(client, call)]


def last_call(sim: str, marker: str) -> dict[str, Any]:
    found = httpx.get(f"{sim}/_sim/calls", params={"contains": marker}).json()
    assert found["count"] >= 1, marker
    last: dict[str, Any] = found["last"]
    return last


FULL_SETTINGS = {
    "systemPrompt": "Be brief.",
    "temperature": 0.3,
    "topP": 0.8,
    "maxTokens": 50,
    "stopSequences": ["ZZZ"],
    "frequencyPenalty": 0.2,
    "presencePenalty": 0.1,
    "thinkingLevel": "high",
}


@pytest.mark.parametrize("adapter", list(ADAPTERS))
async def test_text_reasoning_and_usage(sim: str, client: httpx.AsyncClient, adapter: str) -> None:
    marker = uuid.uuid4().hex
    call = UpstreamCall(
        route(sim, adapter, reasoning_style="openrouter"),
        KEY,
        task(f"{marker} [[sim:cached=2]]", settings=FULL_SETTINGS),
        seed=5,
    )
    events = await run(client, call)
    assembler = ResultAssembler()
    for event in events:
        assembler.feed(event)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert len(text.split()) == 24
    assert events.count(Finished("stop")) == 1
    [usage] = [e for e in events if isinstance(e, UsageReport)]
    assert usage.completion_tokens >= 24
    assert usage.cached_tokens == 2
    if adapter != "segmind":  # Segmind documents messages only: no reasoning control
        assert any(isinstance(e, ReasoningDelta) for e in events)
        assert usage.reasoning_tokens == 16  # "high" reached the upstream
    assert (
        assembler.item(
            call.task, 0, 5, __import__("core.catalog").catalog.Price(input=1, output=1)
        ).text
        == text
    )


async def test_chat_maps_every_setting(sim: str, client: httpx.AsyncClient) -> None:
    marker = uuid.uuid4().hex
    tools = [
        {
            "type": "function",
            "name": "lookup",
            "description": "d",
            "schema": {"type": "object", "properties": {"q": {"type": "string"}}},
        }
    ]
    call = UpstreamCall(
        route(sim, "openai-chat", headers={"X-Title": "taskwire"}),
        KEY,
        task(
            marker,
            settings=FULL_SETTINGS,
            tools=tools,
            toolChoice={"type": "auto"},
            providerSettings={"top_k": 4},
        ),
        seed=9,
        images=(PNG,),
    )
    await run(client, call)
    last = last_call(sim, marker)
    body = last["body"]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1]["content"][1]["type"] == "image_url"
    assert (body["temperature"], body["top_p"], body["max_completion_tokens"]) == (0.3, 0.8, 50)
    assert body["stop"] == ["ZZZ"]
    assert (body["frequency_penalty"], body["presence_penalty"]) == (0.2, 0.1)
    assert body["reasoning_effort"] == "high" and body["seed"] == 9
    assert body["tools"][0]["function"]["name"] == "lookup" and body["tool_choice"] == "auto"
    assert body["top_k"] == 4 and body["stream"] is True
    assert last["headers"]["x-title"] == "taskwire"
    assert last["images"][0]["mime"] == "image/png"
    # OpenRouter's dialect, and thinking switched off
    call = UpstreamCall(
        route(sim, "openai-chat", reasoning_style="openrouter", max_tokens_param="max_tokens"),
        KEY,
        task(marker + "b", settings={"thinkingLevel": "off"}),
        seed=1,
    )
    await run(client, call)
    body = last_call(sim, marker + "b")["body"]
    assert body["reasoning"] == {"enabled": False} and "max_tokens" in body


async def test_responses_maps_every_setting(sim: str, client: httpx.AsyncClient) -> None:
    marker = uuid.uuid4().hex
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": marker},
        {"role": "assistant", "tools": [{"id": "c1", "name": "f", "input": {"a": 1}}]},
        {"role": "tool", "id": "c1", "content": "42"},
    ]
    call = UpstreamCall(
        route(sim, "openai-responses"),
        KEY,
        task(
            "x",
            messages=messages,
            settings=FULL_SETTINGS,
            outputFormat="JSON",
            jsonSchema={"type": "object", "properties": {"n": {"type": "integer"}}},
            tools=[{"type": "function", "name": "f", "schema": {"type": "object"}}],
            toolChoice={"type": "tool", "name": "f"},
        ),
        seed=1,
        images=(PNG,),
    )
    await run(client, call)
    body = last_call(sim, marker)["body"]
    assert body["instructions"] == "Be brief.\n\nsys"
    assert body["input"][0] == {
        "role": "user",
        "content": [
            {"type": "input_text", "text": marker},
            {"type": "input_image", "image_url": PNG},
        ],
    }
    assert body["input"][1] == {
        "type": "function_call",
        "call_id": "c1",
        "name": "f",
        "arguments": json.dumps({"a": 1}),
    }
    assert body["input"][2] == {"type": "function_call_output", "call_id": "c1", "output": "42"}
    assert body["max_output_tokens"] == 50 and body["reasoning"] == {"effort": "high"}
    assert body["text"]["format"]["type"] == "json_schema"
    assert body["tools"][0] == {
        "type": "function",
        "name": "f",
        "description": "",
        "parameters": {"type": "object"},
    }
    assert body["tool_choice"] == {"type": "function", "name": "f"}


async def test_segmind_and_runware_requests(sim: str, client: httpx.AsyncClient) -> None:
    marker = uuid.uuid4().hex
    await run(
        client,
        UpstreamCall(
            route(sim, "segmind"), KEY, task(marker, settings={"systemPrompt": "S"}), seed=1
        ),
    )
    last = last_call(sim, marker)
    assert last["kind"] == "segmind"
    assert last["body"]["messages"][0] == {"role": "system", "content": "S"}
    await run(
        client,
        UpstreamCall(
            route(sim, "runware"),
            KEY,
            task(marker + "r", settings=FULL_SETTINGS),
            seed=7,
            images=(PNG,),
        ),
    )
    last = last_call(sim, marker + "r")
    [upstream_task] = last["body"]
    assert upstream_task["deliveryMethod"] == "stream" and upstream_task["seed"] == 7
    assert upstream_task["settings"]["maxTokens"] == 50
    assert upstream_task["inputs"]["images"] == [PNG]


@pytest.mark.parametrize("adapter", ["openai-chat", "openai-responses"])
async def test_tool_calls_and_json(sim: str, client: httpx.AsyncClient, adapter: str) -> None:
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    events = await run(
        client,
        UpstreamCall(
            route(sim, adapter), KEY, task("call get_weather city=Oslo", tools=tools), seed=1
        ),
    )
    assembler = ResultAssembler()
    for event in events:
        assembler.feed(event)
    assert any(isinstance(e, ToolCallDelta) for e in events)
    [call] = assembler.tool_calls()
    assert call.name == "get_weather" and call.input == {"city": "Oslo"}
    assert assembler.finish_reason == "tool_calls"
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    events = await run(
        client,
        UpstreamCall(
            route(sim, adapter),
            KEY,
            task("json n=5", outputFormat="JSON", jsonSchema=schema),
            seed=1,
        ),
    )
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert json.loads(text) == {"n": 5}


ERRORS = [
    ("[[sim:status=429,retry_after=3]]", UpstreamRateLimited),
    ("[[sim:status=503]]", UpstreamServerError),
    ("[[sim:status=500]]", UpstreamServerError),
    ("[[sim:status=401]]", UpstreamRejected),
    ("[[sim:status=400]]", UpstreamRejected),
    ("[[sim:hang]]", UpstreamTimeout),
]


@pytest.mark.parametrize("adapter", list(ADAPTERS))
@pytest.mark.parametrize(("directive", "error"), ERRORS)
async def test_error_classes(
    sim: str, client: httpx.AsyncClient, adapter: str, directive: str, error: type[UpstreamError]
) -> None:
    call = UpstreamCall(
        route(sim, adapter, timeout_s=0.5), KEY, task(f"{uuid.uuid4().hex} {directive}"), seed=1
    )
    with pytest.raises(error) as caught:
        await run(client, call)
    assert UPSTREAM_SECRET_MARKER not in caught.value.message
    if error is UpstreamRateLimited:
        assert caught.value.retry_after == 3


@pytest.mark.parametrize("adapter", ["openai-chat", "openai-responses", "runware"])
async def test_broken_streams(sim: str, client: httpx.AsyncClient, adapter: str) -> None:
    call = UpstreamCall(
        route(sim, adapter), KEY, task(f"{uuid.uuid4().hex} [[sim:drop_after=3]]"), seed=1
    )
    with pytest.raises(UpstreamStreamBroken):
        await run(client, call)


async def test_segmind_specific_errors(sim: str, client: httpx.AsyncClient) -> None:
    out_of_credits = UpstreamCall(route(sim, "segmind"), KEY, task("[[sim:status=406]]"), seed=1)
    with pytest.raises(UpstreamRejected, match="credits") as caught:
        await run(client, out_of_credits)
    assert caught.value.code == "noAvailableServer"
    garbage = UpstreamCall(route(sim, "segmind"), KEY, task("[[sim:garbage]]"), seed=1)
    with pytest.raises(UpstreamRejected) as caught:
        await run(client, garbage)
    assert caught.value.code == "unrecognizedResponse"
    wrong_key = UpstreamCall(route(sim, "segmind"), "nope", task("hi"), seed=1)
    with pytest.raises(UpstreamRejected, match="credentials"):
        await run(client, wrong_key)


async def test_unreachable(client: httpx.AsyncClient) -> None:
    dead = Route(
        name="dead",
        adapter="openai-chat",
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        model="m",
        api_key_env="X",
        timeout_s=1,
    )
    with pytest.raises(UpstreamUnreachable):
        await run(client, UpstreamCall(dead, KEY, task("hi"), seed=1))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("adapter", list(ADAPTERS))
async def test_the_upstream_connection_is_reused(sim: str, adapter: str, transport: str) -> None:
    """A stream read to `[DONE]` leaves its connection in the pool: three calls, one TCP
    connection (closing a response with its last bytes unread used to cost every upstream
    call a new connection)."""
    connects: list[str] = []

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.started":
            connects.append(event)

    async def hook(request: httpx.Request) -> None:
        request.extensions["trace"] = trace

    async def connected(*_: Any) -> None:
        connects.append("aiohttp")

    aiohttp_trace = aiohttp.TraceConfig()
    aiohttp_trace.on_connection_create_end.append(connected)
    options = {"event_hooks": {"request": [hook]}, "trace_configs": [aiohttp_trace]}
    async with provider_client(transport, **options) as client:
        for seed in range(3):
            call = UpstreamCall(route(sim, adapter), KEY, task("reuse [[sim:tokens=4]]"), seed)
            events = await run(client, call)
            assert events.count(Finished("stop")) == 1
    assert len(connects) == 1


async def _serve_once(answer: bytes, *, reset: bool = False) -> tuple[str, asyncio.Server]:
    """A server that reads a request, writes `answer` and hangs up (with a TCP reset, if
    `reset`): an upstream dying before or during its answer."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(0.05)
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}/v1", server


HALF_A_STREAM = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    b"2d\r\n"
    b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    b"\r\n"
)


@pytest.mark.parametrize(
    ("answer", "reset"),
    [(b"", False), (HALF_A_STREAM, False), (HALF_A_STREAM, True), (b"HTTP/1.1 2", False)],
    ids=["hung-up-before-answering", "hung-up-mid-stream", "reset-mid-stream", "garbage"],
)
async def test_an_upstream_hanging_up_is_a_broken_stream_not_a_connect_failure(
    client: httpx.AsyncClient, answer: bytes, reset: bool
) -> None:
    # httpx-aiohttp's own mapping made any aiohttp ClientConnectionError (a server hanging
    # up, mid-answer included) an httpx.ConnectTimeout: "unreachable", which is retried on
    # another route as if nothing had been sent
    base_url, server = await _serve_once(answer, reset=reset)
    try:
        dead = Route(
            name="dying",
            adapter="openai-chat",
            base_url=base_url,
            model="m",
            api_key_env="X",
            timeout_s=2,
        )
        with pytest.raises(UpstreamStreamBroken):
            await run(client, UpstreamCall(dead, KEY, task("hi"), seed=1))
    finally:
        server.close()
        await server.wait_closed()


async def test_a_connect_timeout_is_unreachable_and_a_read_timeout_is_a_timeout(
    client: httpx.AsyncClient, sim: str
) -> None:
    # connect: what aiohttp raises for a connect (or pool) wait that timed out, as mapped
    connect = translate(aiohttp.ConnectionTimeoutError("Connection timeout to host"))
    assert isinstance(connect, httpx.ConnectTimeout)
    assert isinstance(error_for_transport(connect, streaming=True), UpstreamUnreachable)
    # read: the route's timeout, per request (httpx.Timeout via the request's extensions)
    slow = UpstreamCall(route(sim, "openai-chat", timeout_s=0.3), KEY, task("[[sim:hang]]"), 1)
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamTimeout):
        await run(client, slow)
    assert asyncio.get_running_loop().time() - started < 3
