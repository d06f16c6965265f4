"""The simulator's HTTP app: four upstream APIs over real HTTP, with injectable faults.

- `POST /v1/chat/completions`  OpenAI Chat Completions (Vivgrid, OpenRouter, OpenAI)
- `POST /v1/responses`         OpenAI Responses API (OurToken, OpenAI)
- `POST /v1/{model}`           Segmind (`x-api-key`, `x-remaining-credits`)
- `POST /v1`                   a Runware-style task API (as at api.runware.ai/v1)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sim import chat, responses, runware
from sim.generation import BadRequest, SimRequest, plan
from sim.scenario import Scenario
from sim.timing import SimulatedDrop, _Flush

# Upstream error bodies carry this marker so tests can prove taskwire never copies them.
UPSTREAM_SECRET_MARKER = "org-SIMSECRET-7f3a"  # noqa: S105 (a marker, not a secret)


@dataclass
class Call:
    kind: str
    model: str | None
    prompt: str
    body: Any
    headers: dict[str, str]
    images: list[dict[str, Any]]


@dataclass
class SimState:
    api_key: str | None
    defaults: Scenario
    seen: Counter[str] = field(default_factory=Counter)
    calls: deque[Call] = field(default_factory=lambda: deque(maxlen=50_000))
    in_flight: int = 0
    peak_in_flight: int = 0
    segmind_credits: float = 1000.0


# --- errors in each API's own shape


def openai_error(
    status: int, message: str, kind: str, code: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def segmind_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def runware_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"errors": [{"code": "simulatedError", "message": message}]}
    return JSONResponse(body, status_code=status, headers=headers)


ErrorFactory = Callable[[int, str, dict[str, str] | None], Response]


def _openai(status: int, message: str, headers: dict[str, str] | None) -> Response:
    kinds = {
        429: ("tokens", "rate_limit_exceeded"),
        401: ("invalid_request_error", "invalid_api_key"),
    }
    kind, code = kinds.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return openai_error(status, message, kind, code, headers)


def fault_response(scenario: Scenario, errors: ErrorFactory) -> Response:
    """The error answer for a scenario with a `status`, in the API's own format."""
    assert scenario.status is not None
    status = scenario.status
    headers = {"Retry-After": scenario.retry_after} if scenario.retry_after is not None else {}
    if status == 429:
        message = (
            f"Rate limit reached for gpt-5.4-mini in organization "
            f"{UPSTREAM_SECRET_MARKER}. Please try again shortly."
        )
    elif status in (401, 403):
        message = f"Incorrect API key provided: sk-{UPSTREAM_SECRET_MARKER}"
    elif status == 406:
        message = f"Not enough credits ({UPSTREAM_SECRET_MARKER})."
    elif status >= 500:
        message = f"The server had an error ({UPSTREAM_SECRET_MARKER})."
    else:
        message = f"Simulated failure ({UPSTREAM_SECRET_MARKER})."
    return errors(status, message, headers)


def misbehaves(state: SimState, scenario: Scenario, prompt: str) -> bool:
    """Whether this request gets the scenario's fault: with `fail=K`, only the first K
    requests carrying this prompt do; without it, every one does."""
    if not scenario.faulty:
        return False
    state.seen[prompt] += 1
    return scenario.fail is None or state.seen[prompt] <= scenario.fail


# --- shared plumbing


def bearer_ok(state: SimState, request: Request, key: str | None = None) -> bool:
    if key is None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
    if not key:
        return False
    return state.api_key is None or key == state.api_key


async def read_json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        raise BadRequest("We could not parse the JSON body of your request.", "body") from None


def sse_response(events: AsyncIterator[Any]) -> StreamingResponse:
    """Server-sent events; `(name, data)` pairs become named events."""

    async def encode() -> AsyncIterator[bytes]:
        pending: list[str] = []
        async for event in events:
            if isinstance(event, _Flush):
                if pending:
                    yield "".join(pending).encode()
                    pending = []
                continue
            if isinstance(event, tuple):
                name, data = event
                pending.append(
                    f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
                )
            else:
                payload = (
                    event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
                )
                pending.append(f"data: {payload}\n\n")
        if pending:
            yield "".join(pending).encode()

    return StreamingResponse(
        encode(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def record(state: SimState, kind: str, request: Request, body: Any, parsed: SimRequest) -> None:
    headers = {
        k: v for k, v in request.headers.items() if k in ("http-referer", "x-title", "user-agent")
    }
    images = [
        {"kind": i.kind, "mime": i.mime, "bytes": i.size, "url": i.url} for i in parsed.images
    ]
    model = request.path_params.get("model") or (
        body.get("model") if isinstance(body, dict) else None
    )
    if isinstance(body, list):  # a Runware task array
        model = next((t.get("model") for t in body if t.get("taskType") == "textInference"), None)
    state.calls.append(Call(kind, model, parsed.prompt, body, headers, images))


async def _stall(request: Request) -> Response:
    """A non-streamed answer that never comes (until the client gives up)."""
    while not await request.is_disconnected():  # noqa: ASYNC110 (ASGI has no event)
        await asyncio.sleep(0.2)
    return Response(status_code=499)


async def _serve(
    request: Request,
    kind: str,
    errors: ErrorFactory,
    parse: Callable[[Any], SimRequest],
    answer: Callable[[Any, SimRequest, Scenario], Any],
    body: Any = None,
) -> Response:
    """The common path: parse, record, apply the scenario's faults, then answer."""
    state: SimState = request.app.state.sim
    try:
        if body is None:
            body = await read_json(request)
        parsed = parse(body)
    except BadRequest as exc:
        return errors(400, str(exc), None)
    record(state, kind, request, body, parsed)
    # Directives in the model name make one route misbehave while another, asked the same
    # prompt, does not (how routing and fallback are tested).
    model = request.path_params.get("model") or (
        body.get("model") if isinstance(body, dict) else None
    )
    scenario = state.defaults.with_directives(f"{parsed.prompt} {model or ''}")
    if not misbehaves(state, scenario, parsed.prompt):
        scenario = scenario.well_behaved()
    elif scenario.status is not None:
        return fault_response(scenario, errors)
    try:
        result = answer(body, parsed, scenario)
        if asyncio.iscoroutine(result):
            result = await result
    except BadRequest as exc:
        return errors(400, str(exc), None)
    if isinstance(result, StreamingResponse):
        return result  # streams pace (and hang) themselves
    return await _whole(request, scenario, result)


async def _whole(request: Request, scenario: Scenario, body: Any) -> Response:
    """A whole (non-streamed) answer, after the scenario's delay, or never."""
    if scenario.hang or scenario.hang_after is not None:
        return await _stall(request)
    if scenario.ttft_ms:
        await asyncio.sleep(scenario.ttft_ms / 1000)
    return body if isinstance(body, Response) else JSONResponse(body)


# --- the four APIs


async def chat_completions(request: Request) -> Response:
    if not bearer_ok(request.app.state.sim, request):
        return openai_error(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )

    def answer(body: Any, parsed: SimRequest, scenario: Scenario) -> Any:
        model = body.get("model") or ""
        if not model:
            raise BadRequest("you must provide a model parameter", "model")
        generations = plan(parsed, scenario)
        if body.get("stream") is True:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return sse_response(
                chat.completion_chunks(model, parsed, generations, scenario, include_usage)
            )
        return chat.completion_body(model, parsed, generations, scenario)

    return await _serve(request, "chat.completions", _openai, chat.parse_request, answer)


async def responses_api(request: Request) -> Response:
    if not bearer_ok(request.app.state.sim, request):
        return openai_error(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )

    def answer(body: Any, parsed: SimRequest, scenario: Scenario) -> Any:
        model = body.get("model") or ""
        if not model:
            raise BadRequest("model is required", "model")
        if body.get("stream") is True:
            return sse_response(responses.response_events(model, parsed, scenario))
        return responses.response_body(model, parsed, scenario)

    return await _serve(request, "responses", _openai, responses.parse_request, answer)


async def segmind(request: Request) -> Response:
    state: SimState = request.app.state.sim
    key = request.headers.get("x-api-key", "")
    if not key or (state.api_key is not None and key != state.api_key):
        return segmind_error(401, "Unauthorized: user authentication failed")

    def answer(body: Any, parsed: SimRequest, scenario: Scenario) -> Any:
        state.segmind_credits -= 0.01
        headers = {"x-remaining-credits": f"{state.segmind_credits:.2f}"}
        if "garbage" in scenario.flags:  # not a chat completion at all
            return JSONResponse({"status": "ok", "output": "surprise"}, headers=headers)
        generations = plan(parsed, scenario)
        completion = chat.completion_body(
            request.path_params["model"], parsed, generations, scenario
        )
        return JSONResponse(completion, headers=headers)

    def errors(status: int, message: str, headers: dict[str, str] | None) -> Response:
        return segmind_error(status, message, headers)

    return await _serve(request, "segmind", errors, chat.parse_request, answer)


async def segmind_wrong_method(_request: Request) -> Response:
    return segmind_error(405, "Method Not Allowed")


async def runware_tasks(request: Request) -> Response:
    state: SimState = request.app.state.sim

    def errors(status: int, message: str, headers: dict[str, str] | None) -> Response:
        return runware_error(status, message, headers)

    try:
        body = await read_json(request)
        key, tasks = runware.split_tasks(body)
    except BadRequest as exc:
        return errors(400, str(exc), None)
    if not bearer_ok(state, request, key):
        return runware_error(401, "Invalid API key.")
    if len(tasks) != 1:
        return errors(400, "the simulator takes one textInference task per request", None)
    task = tasks[0]

    def answer(_body: Any, parsed: SimRequest, scenario: Scenario) -> Any:
        if task.get("deliveryMethod") == "stream":
            return sse_response(runware.stream_chunks(task, parsed, scenario))
        [generation] = plan(parsed, scenario)
        return {"data": [runware.result_item(task, parsed, generation, scenario)]}

    return await _serve(
        request, "runware", errors, lambda _b: runware.parse_task(task), answer, body=body
    )


# --- test hooks


async def calls(request: Request) -> Response:
    """How many upstream calls had a prompt containing `contains`, and the last one."""
    state: SimState = request.app.state.sim
    needle = request.query_params.get("contains", "")
    kind = request.query_params.get("kind")
    matching = [
        call
        for call in state.calls
        if needle in call.prompt and (kind is None or call.kind == kind)
    ]
    last = matching[-1] if matching else None
    return JSONResponse(
        {
            "count": len(matching),
            "kinds": dict(Counter(call.kind for call in matching)),
            "models": dict(Counter(str(call.model) for call in matching)),
            "last": None
            if last is None
            else {
                "kind": last.kind,
                "body": last.body,
                "headers": last.headers,
                "images": last.images,
            },
        }
    )


async def stats(request: Request) -> Response:
    """Requests in flight now and at the peak; POST resets the peak."""
    state: SimState = request.app.state.sim
    if request.method == "POST":
        state.peak_in_flight = state.in_flight
    return JSONResponse({"in_flight": state.in_flight, "peak_in_flight": state.peak_in_flight})


async def health(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


class _InFlight:
    """Counts requests being served, to show how many a client runs at once."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim"):
            await self.app(scope, receive, send)
            return
        state: SimState = scope["app"].state.sim
        state.in_flight += 1
        state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
        try:
            await self.app(scope, receive, send)
        finally:
            state.in_flight -= 1


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
            Route("/v1/responses", responses_api, methods=["POST"]),
            Route("/v1", runware_tasks, methods=["POST"]),
            Route("/v1/{model}", segmind, methods=["POST"]),
            Route("/v1/{model}", segmind_wrong_method, methods=["GET", "PUT", "DELETE"]),
            Route("/_sim/calls", calls, methods=["GET"]),
            Route("/_sim/stats", stats, methods=["GET", "POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        middleware=[Middleware(_InFlight)],
    )
    app.state.sim = SimState(api_key=api_key, defaults=defaults or Scenario())
    logging.getLogger("uvicorn.error").addFilter(_HideSimulatedDrops())
    return app
