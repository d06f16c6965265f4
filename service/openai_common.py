"""What the OpenAI-compatible endpoints share: OpenAI's error shape, the parameter names
errors are given in, Idempotency-Key → taskUUID, and one task's intake and submit.

The facade maps an OpenAI request onto a textInference task and lets the task model
(core/protocol.py) and Intake (service/intake.py) validate it, so limits, shedding, the
catalog and idempotency are the native door's. Their errors name task fields
(`settings.temperature`); a `ParamMap` built while mapping translates them back to the
field the client sent (`temperature`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from prometheus_client import Counter
from pydantic import ValidationError
from starlette.responses import StreamingResponse

from core.errors import InvalidRequest, ServiceUnavailable, TaskwireError
from core.events import Event, TaskEvents
from core.protocol import TextInferenceTask, errors_from_validation
from service.api import bearer_key, encode_json, read_body
from service.intake import Intake, Submitted
from service.metrics import rejected, rejected_code
from service.state import AppState
from service.streaming import sse_response

TASK_UUID_HEADER = "x-taskwire-task-uuid"
# uuid5 namespace of Idempotency-Key taskUUIDs (fixed: a key must map to the same task in
# every process and version).
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f0d8a52-3c1e-4f7b-9b8e-2a4d5c6e7f80")

OPENAI_REQUESTS = Counter(
    "taskwire_api_openai_requests",
    "Requests to the OpenAI-compatible endpoints, by endpoint (chat.completions, "
    "responses.create, responses.get, responses.cancel), whether the answer was an event "
    "stream, and its HTTP status. Their refusals also count in taskwire_api_rejected_total.",
    ["endpoint", "stream", "status"],
)
# the route's function name → the endpoint label (a closed set)
_ENDPOINTS = {
    "chat_completions": "chat.completions",
    "create_response": "responses.create",
    "get_response": "responses.get",
    "cancel_response": "responses.cancel",
}


class MeteredRoute(APIRoute):
    """An OpenAI-compatible route whose answers are counted in OPENAI_REQUESTS."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        endpoint = _ENDPOINTS.get(self.name, "other")

        async def metered(request: Request) -> Response:
            response = await handler(request)
            streamed = "true" if isinstance(response, StreamingResponse) else "false"
            OPENAI_REQUESTS.labels(endpoint, streamed, str(response.status_code)).inc()
            return response

        return metered


class OpenAIError(Exception):
    """An error answered in OpenAI's shape, `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = kind
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, headers: dict[str, str] | None = None) -> Response:
        extra = dict(headers or {})
        if self.retry_after is not None:
            extra["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return json_answer(self.body(), self.status, extra)


OPENAI_PATHS = ("/v1/chat/completions", "/v1/responses")


def is_openai_path(path: str) -> bool:
    """Whether a request is to the OpenAI-compatible door (its errors take OpenAI's shape,
    whoever raises them: a wrong method, a bad path parameter, a bug)."""
    return path.startswith(OPENAI_PATHS)


def bad_value(message: str, param: str | None, code: str = "invalid_value") -> OpenAIError:
    """A 400 for a request field the mapping to a task cannot take, named as the client sent
    it (counted as a refusal, its code in the native door's camelCase)."""
    rejected_code(re.sub(r"_([a-z])", lambda m: m.group(1).upper(), code))
    return OpenAIError(message, param=param, code=code)


def json_answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        encode_json(body), status_code=status, media_type="application/json", headers=headers
    )


def snake(code: str) -> str:
    """A taskwire camelCase code in OpenAI's snake_case (`rateLimitExceeded` →
    `rate_limit_exceeded`)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", code).lower()


# Result error codes (a failed inference) and the HTTP status a whole failed answer gets.
RESULT_STATUS = {
    "providerRateLimit": 429,
    "timeoutProvider": 504,
    "noAvailableServer": 503,
    "taskCancelled": 409,
    "taskExpired": 408,
}


def error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def from_taskwire(exc: TaskwireError, params: ParamMap | None = None) -> OpenAIError:
    """A taskwire error as OpenAI's error, its parameter named as the client sent it (and
    counted as a refusal by its taskwire code, as on the native door)."""
    rejected(exc)
    status = exc.status
    code = snake(exc.code)
    if exc.code == "unknownModel":
        status, code = 404, "model_not_found"
    elif exc.code == "invalidApiKey" or exc.code == "missingApiKey":
        code = "invalid_api_key"
    param = exc.parameter
    if param is not None and params is not None:
        param = params.openai(param)
    return OpenAIError(
        exc.message,
        status=status,
        kind=error_type(status),
        param=param,
        code=code,
        retry_after=exc.retry_after,
    )


def result_error(code: str, message: str) -> OpenAIError:
    """A failed result (inference error, cancel, expiry) as the answer's error."""
    status = RESULT_STATUS.get(code, 502)
    return OpenAIError(message, status=status, kind=error_type(status), code=snake(code))


@dataclass
class ParamMap:
    """Task field paths → the OpenAI field paths they came from, by longest dotted prefix
    (`messages.3.tools.0.input` → `messages.3.tool_calls.0.function.arguments`)."""

    prefixes: dict[str, str | None] = field(default_factory=dict)

    def add(self, task_path: str, openai_path: str | None) -> None:
        self.prefixes[task_path] = openai_path

    def openai(self, task_path: str) -> str | None:
        parts = task_path.split(".")
        for cut in range(len(parts), 0, -1):
            head = ".".join(parts[:cut])
            if head in self.prefixes:
                mapped = self.prefixes[head]
                if mapped is None:
                    return None
                return ".".join([mapped, *parts[cut:]])
        return task_path


# --- request plumbing


async def read_json_object(request: Request, state: AppState) -> dict[str, Any]:
    body = await read_body(request, state.settings.max_body_bytes)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise OpenAIError(
            "We could not parse the JSON body of your request: it must be a JSON object "
            "(UTF-8, no NaN or Infinity).",
            code="invalid_json",
        ) from None
    if not isinstance(payload, dict):
        raise OpenAIError("The request body must be a JSON object.", code="invalid_json")
    return payload


def authenticate(request: Request, state: AppState) -> str:
    """The owner of the request's bearer key (OpenAI's 401 if none or unknown)."""
    try:
        return state.keyring.authenticate(bearer_key(request))
    except TaskwireError as exc:
        raise from_taskwire(exc) from None


def task_uuid_for(owner: str, request: Request) -> str:
    """The request's taskUUID: derived from its Idempotency-Key (so a retried POST is the
    same task, and the native idempotency answers it), else a fresh UUID v4."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return str(uuid.uuid4())
    if not key.strip() or len(key) > 255:
        raise OpenAIError(
            "The Idempotency-Key header must be 1 to 255 characters.",
            param="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    raw = uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{owner}\0{key}").bytes
    # version 4 and the RFC variant bits, so the task protocol takes it as a UUID v4
    fixed = bytearray(raw)
    fixed[6] = (fixed[6] & 0x0F) | 0x40
    fixed[8] = (fixed[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(fixed)))


def build_task(task: dict[str, Any], params: ParamMap) -> TextInferenceTask:
    """The mapped task validated by the task model; its first error in OpenAI's shape."""
    try:
        return TextInferenceTask.model_validate(task)
    except ValidationError as exc:
        first = errors_from_validation(exc, TextInferenceTask)[0]
        raise from_taskwire(first, params) from None
    except InvalidRequest as exc:
        raise from_taskwire(exc, params) from None


def intake_for(owner: str, state: AppState) -> Intake:
    return Intake(
        owner=owner,
        settings=state.settings,
        catalog=state.catalog,
        store=state.store,
        hub=state.hub,
        outbound=state.outbound,
        images=state.images,
        shedder=state.shedder,
    )


async def submit_one(
    intake: Intake,
    task: TextInferenceTask,
    raw: dict[str, Any],
    subscriptions: contextlib.AsyncExitStack,
    params: ParamMap,
) -> Submitted:
    """Accept and submit one task (its subscription, for sync and stream, in
    `subscriptions`); `raw` is what its fingerprint is taken of (the OpenAI body), so the
    same Idempotency-Key with another body is a 409."""
    try:
        accepted = await intake.accept(task, subscriptions, raw)
        [outcome] = await intake.submit([accepted])
    except TaskwireError as exc:
        raise from_taskwire(exc, params) from None
    if isinstance(outcome, TaskwireError):
        if outcome.code == "conflictTaskUUID":
            raise OpenAIError(
                "This Idempotency-Key was already used with a different request body; use "
                "a new key for new work.",
                status=409,
                param="Idempotency-Key",
                code="idempotency_key_conflict",
            )
        raise from_taskwire(outcome, params)
    return outcome


def storage_unavailable() -> OpenAIError:
    exc = ServiceUnavailable("Task storage is unavailable; try again shortly.", retry_after=2)
    return from_taskwire(exc)


# --- event streams


class Frames(Protocol):
    """Renders a task's stored events as the bytes of an OpenAI-style event stream."""

    @property
    def done(self) -> bool: ...

    def opening(self) -> list[bytes]: ...

    def render(self, event: Event) -> list[bytes]: ...

    def closing(self) -> list[bytes]: ...


def sse_data(payload: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event is not None else b""
    return head + b"data: " + encode_json(payload) + b"\n\n"


async def frames_body(
    events: TaskEvents,
    frames: Frames,
    *,
    keepalive_s: float,
    cleanup: contextlib.AsyncExitStack | None = None,
) -> AsyncIterator[bytes]:
    """The stream's bytes until every result is final; comment lines keep a silent
    connection open (OpenAI's SDKs skip them)."""
    try:
        for frame in frames.opening():
            yield frame
        while not frames.done:
            try:
                event = await asyncio.wait_for(events.next(), keepalive_s)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            for frame in frames.render(event):
                yield frame
        for frame in frames.closing():
            yield frame
    finally:
        if cleanup is not None:
            await cleanup.aclose()


def stream_answer(body: AsyncIterator[bytes], headers: dict[str, str]) -> StreamingResponse:
    return sse_response(body, headers)
