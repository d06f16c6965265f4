"""The simulator's HTTP app: upstream provider endpoints over real HTTP, with injectable faults."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sim.chat import BadRequest, completion_body, completion_chunks, message_texts, plan_choices
from sim.scenario import Scenario
from sim.timing import SimulatedDrop, _Flush

# Upstream error bodies carry this marker so tests can prove taskwire never copies them.
UPSTREAM_SECRET_MARKER = "org-SIMSECRET-7f3a"  # noqa: S105 (a marker, not a secret)


@dataclass
class SimState:
    api_key: str | None
    defaults: Scenario
    seen: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0
    calls: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=50_000))


def openai_error(
    status: int, message: str, kind: str, code: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def misbehaves(state: SimState, scenario: Scenario, prompt: str) -> bool:
    """Whether this request gets the scenario's fault: with `fail=K`, only the first K
    requests carrying this prompt do; without it, every one does."""
    if not scenario.faulty:
        return False
    state.seen[prompt] += 1
    return scenario.fail is None or state.seen[prompt] <= scenario.fail


def error_response(scenario: Scenario) -> Response:
    """The upstream error answer for a scenario with a `status`."""
    assert scenario.status is not None
    headers = {"Retry-After": scenario.retry_after} if scenario.retry_after is not None else None
    status = scenario.status
    if status == 429:
        return openai_error(
            429,
            f"Rate limit reached for gpt-5.4-mini in organization {UPSTREAM_SECRET_MARKER} "
            "on tokens per min. Please try again shortly.",
            "tokens",
            "rate_limit_exceeded",
            headers,
        )
    if status in (401, 403):
        return openai_error(
            status,
            f"Incorrect API key provided: sk-{UPSTREAM_SECRET_MARKER}",
            "invalid_request_error",
            "invalid_api_key",
            headers,
        )
    if status >= 500:
        return openai_error(
            status,
            f"The server had an error ({UPSTREAM_SECRET_MARKER}).",
            "server_error",
            None,
            headers,
        )
    return openai_error(
        status,
        f"Simulated failure ({UPSTREAM_SECRET_MARKER}).",
        "invalid_request_error",
        None,
        headers,
    )


def check_bearer(state: SimState, request: Request) -> Response | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return openai_error(401, "You didn't provide an API key.", "invalid_request_error", None)
    if state.api_key is not None and token != state.api_key:
        return openai_error(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )
    return None


async def read_json(request: Request) -> dict[str, Any] | Response:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return openai_error(
            400, "We could not parse the JSON body of your request.", "invalid_request_error", None
        )
    if not isinstance(body, dict):
        return openai_error(400, "The body must be a JSON object.", "invalid_request_error", None)
    return body


def sse_response(events: AsyncIterator[dict[str, Any] | str | _Flush]) -> StreamingResponse:
    async def encode() -> AsyncIterator[bytes]:
        pending: list[str] = []
        async for event in events:
            if isinstance(event, _Flush):
                if pending:
                    yield "".join(pending).encode()
                    pending = []
                continue
            payload = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
            pending.append(f"data: {payload}\n\n")
        if pending:
            yield "".join(pending).encode()

    return StreamingResponse(
        encode(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


async def chat_completions(request: Request) -> Response:
    state: SimState = request.app.state.sim
    denied = check_bearer(state, request)
    if denied is not None:
        return denied
    body = await read_json(request)
    if isinstance(body, Response):
        return body
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return openai_error(
            400, "messages must be a non-empty array", "invalid_request_error", "invalid_value"
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return openai_error(
            400, "you must provide a model parameter", "invalid_request_error", None
        )
    texts = message_texts(messages)
    prompt = "\n".join(texts)
    state.calls.append(("chat.completions", prompt))
    scenario = state.defaults.with_directives(prompt)
    if not misbehaves(state, scenario, prompt):
        scenario = scenario.well_behaved()
    elif scenario.status is not None:
        return error_response(scenario)
    try:
        choices = plan_choices(body, scenario, prompt)
    except BadRequest as exc:
        return openai_error(400, str(exc), "invalid_request_error", "invalid_value")
    if body.get("stream") is True:
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        return sse_response(completion_chunks(model, texts, choices, scenario, include_usage))
    if scenario.hang or scenario.hang_after is not None:
        while not await request.is_disconnected():  # noqa: ASYNC110 (ASGI has no event)
            await asyncio.sleep(0.2)
        return Response(status_code=499)
    if scenario.ttft_ms:
        await asyncio.sleep(scenario.ttft_ms / 1000)
    return JSONResponse(completion_body(model, texts, choices))


class _InFlight:
    """Counts requests being served, to show how many a client runs at once."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        state: SimState = scope["app"].state.sim
        state.in_flight += 1
        state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
        try:
            await self.app(scope, receive, send)
        finally:
            state.in_flight -= 1


async def stats(request: Request) -> Response:
    """Test hook: requests in flight now and at the peak; POST resets the peak."""
    state: SimState = request.app.state.sim
    if request.method == "POST":
        state.peak_in_flight = state.in_flight
    return JSONResponse({"in_flight": state.in_flight, "peak_in_flight": state.peak_in_flight})


async def calls(request: Request) -> Response:
    """Test hook: how many upstream calls had a prompt containing `contains`."""
    state: SimState = request.app.state.sim
    needle = request.query_params.get("contains", "")
    matching = [kind for kind, prompt in state.calls if needle in prompt]
    return JSONResponse({"count": len(matching), "kinds": dict(Counter(matching))})


async def health(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


class _HideSimulatedDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, SimulatedDrop):
                return False
            exc = (
                exc.__cause__
                or exc.__context__
                or (
                    exc.exceptions[0]
                    if isinstance(exc, BaseExceptionGroup) and exc.exceptions
                    else None
                )
            )
        return True


def create_app(*, api_key: str | None = None, defaults: Scenario | None = None) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/_sim/calls", calls, methods=["GET"]),
            Route("/_sim/stats", stats, methods=["GET", "POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        middleware=[Middleware(_InFlight)],
    )
    app.state.sim = SimState(api_key=api_key, defaults=defaults or Scenario())
    logging.getLogger("uvicorn.error").addFilter(_HideSimulatedDrops())
    return app
