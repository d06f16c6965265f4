"""The task endpoint `POST /v1`: envelope, authentication and the protocol's response shapes."""

from __future__ import annotations

import inspect
import json
import math
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import (
    AuthenticationFailed,
    InvalidRequest,
    PayloadTooLarge,
    ServiceUnavailable,
    TaskwireError,
)
from core.protocol import (
    TASK_UUID_PATTERN,
    AuthenticationTask,
    TaskErrors,
    canonical_uuid,
    parse_task,
)
from core.tracing import TracingMiddleware
from core.tracing import active as tracing_active
from service import metrics
from service.batch import Batch, Slot
from service.limits import check_reads
from service.origin import PublicOrigin, TrustedProxies
from service.state import AppState, State
from service.streaming import sse_body, sse_response

router = APIRouter()


def encode_json(body: Any) -> bytes:
    """JSON as UTF-8. A string that is not valid Unicode (a lone surrogate from a URL path,
    say) cannot be UTF-8: such a body is sent with \\u escapes instead of failing."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()


def json_response(
    body: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        encode_json(body), status_code=status, media_type="application/json", headers=headers
    )


def retry_after_header(error: TaskwireError) -> dict[str, str] | None:
    if error.retry_after is None:
        return None
    return {"Retry-After": str(math.ceil(error.retry_after))}


def error_response(error: TaskwireError, **scope: Any) -> Response:
    headers = retry_after_header(error)
    return json_response({"errors": [error.to_item(**scope)]}, error.status, headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is over the {limit}-byte limit.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is over the {limit}-byte limit.")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_envelope(body: bytes) -> list[Any]:
    if not body.strip():
        raise InvalidRequest(
            "The request body is empty; send a JSON array of tasks.", code="invalidRequestBody"
        )
    try:
        # orjson refuses what strict JSON refuses and the stdlib lets through: lone
        # surrogates (not Unicode), NaN and Infinity (not JSON), nesting past 1024 levels.
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON (UTF-8, no NaN or Infinity): {exc}.",
            code="invalidRequestBody",
        ) from None
    tasks = [payload] if isinstance(payload, dict) else payload
    if not isinstance(tasks, list):
        raise InvalidRequest(
            "The request body must be a JSON array of task objects.", code="invalidRequestBody"
        )
    if not tasks:
        raise InvalidRequest("The task array is empty.", code="invalidRequestBody")
    return tasks


def bearer_key(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def checked_task_uuid(value: str) -> str:
    """A taskUUID from a URL path in its canonical lower-case form, the one task records are
    stored under (InvalidRequest if it is not a UUID v4, in any letter case)."""
    if not TASK_UUID_PATTERN.fullmatch(value):
        raise InvalidRequest(
            "taskUUID must be a hyphenated UUID v4.",
            code="invalidTaskUUID",
            parameter="taskUUID",
        )
    return canonical_uuid(value)


async def authenticated_owner(request: Request, state: State) -> str:
    """The owner id of the request's bearer API key (AuthenticationFailed if none)."""
    return state.keyring.authenticate(bearer_key(request))


Owner = Annotated[str, Depends(authenticated_owner)]


def split_authentication(request: Request, tasks: list[Any]) -> tuple[str | None, list[Any]]:
    """The API key (header, or a leading authentication task) and the remaining tasks."""
    header_key = bearer_key(request)
    first = tasks[0]
    if isinstance(first, dict) and first.get("taskType") == "authentication":
        try:
            auth = parse_task(first)
        except TaskErrors as exc:
            raise exc.errors[0] from None
        assert isinstance(auth, AuthenticationTask)
        if header_key is not None and header_key != auth.apiKey:
            raise AuthenticationFailed(
                "The Authorization header and the authentication task carry different keys.",
                parameter="apiKey",
            )
        return auth.apiKey, tasks[1:]
    return header_key, tasks


def batch_response(slots: list[Slot]) -> Response:
    data = [item for slot in slots for item in slot.items]
    errors = [error.to_item(**slot.scope()) for slot in slots for error in slot.errors]
    first_error = next((e for slot in slots for e in slot.errors), None)
    body: dict[str, Any] = {}
    if data:
        body["data"] = data
    if errors:
        body["errors"] = errors
    headers = None
    if first_error is not None:
        headers = retry_after_header(first_error)
    if not data and first_error is not None:
        return json_response(body, first_error.status, headers)
    status = 202 if any(slot.pending_sync for slot in slots) else 200
    return json_response(body, status, headers)


@router.post("/v1")
@router.post("/v1/", include_in_schema=False)
async def post_tasks(request: Request, state: State) -> Response:
    """The route FastAPI knows (its schema, and an app not started through `task_door`);
    requests to it are normally answered by `task_door`, with the same `answer_tasks`."""
    return await answer_tasks(request, state)


async def answer_tasks(request: Request, state: AppState) -> Response:
    owner: str | None = None  # for metrics
    try:
        body = await read_body(request, state.settings.max_body_bytes)
        tasks = parse_envelope(body)
        api_key, tasks = split_authentication(request, tasks)
        owner = state.keyring.authenticate(api_key)
        if not tasks:
            return json_response({"data": []}, 200)
        await check_reads(state.read_bucket, owner, tasks)
        batch = Batch(
            owner=owner,
            settings=state.settings,
            catalog=state.catalog,
            store=state.store,
            hub=state.hub,
            tokens=state.tokens,
            outbound=state.outbound,
            images=state.images,
            base_url=str(request.base_url),
            deliveries=state.deliveries,
            receive=request.receive,
            shedder=state.shedder,
        )
        slots = await batch.run(tasks)
        stream = next((slot.stream for slot in slots if slot.stream is not None), None)
        if stream is not None:
            metrics.request_answered(slots, 200, owner)
            return sse_response(
                sse_body(
                    stream.events,
                    stream.renderer,
                    keepalive_s=state.settings.sse_keepalive_s,
                    cleanup=stream.cleanup,
                )
            )
        response = batch_response(slots)
        metrics.request_answered(slots, response.status_code, owner)
        return response
    except TaskwireError as exc:
        metrics.request_refused(exc, owner)
        return error_response(exc)
    except (RedisError, OSError):
        error = ServiceUnavailable("Task storage is unavailable; try again shortly.", retry_after=2)
        metrics.request_refused(error, owner)
        return error_response(error)


TASK_PATHS = ("/v1", "/v1/")


def task_door(app: FastAPI) -> ASGIApp | None:
    """`POST /v1` as an ASGI app of its own: PublicOrigin (and TracingMiddleware when on),
    then `answer_tasks`, made once per startup of the application (None before one).

    The hot door skips FastAPI's and Starlette's layers, which do nothing for it:
    `answer_tasks` answers every TaskwireError, Redis and OS error itself in the protocol's
    shape; the body limit is its own (`read_body`); FastAPI's body-limit middleware has no
    limit set here and its telemetry middleware only reports to a global OpenTelemetry
    provider, which taskwire never registers (core/tracing.py); there are no dependencies
    to solve but the state, and no other route to match. What is kept: an unexpected
    exception is answered by the app's own `Exception` handler (the JSON 500, logged) and
    raised on to uvicorn, as Starlette's ServerErrorMiddleware does, and `scope["route"]`
    is the `/v1` route, which names the tracing span."""
    state: AppState | None = getattr(app.state, "taskwire", None)
    if state is None:  # not started
        return None
    door: ASGIApp | None = getattr(app.state, "task_door", None)
    if door is not None and getattr(app.state, "task_door_state", None) is state:
        return door  # made from the state this startup built, never an earlier one's
    routes = {getattr(route, "path", None): route for route in router.routes}
    on_error = app.exception_handlers.get(Exception)

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = app
        scope["route"] = routes.get(scope["path"])
        request = Request(scope, receive, send)
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            response = await answer_tasks(request, state)
            await response(scope, receive, sending)
        except Exception as exc:
            if on_error is None:
                raise
            if not started:
                error = on_error(request, exc)
                if inspect.isawaitable(error):
                    error = await error
                await error(scope, receive, send)
            raise

    inner: ASGIApp = TracingMiddleware(endpoint) if tracing_active() else endpoint
    app.state.task_door_state = state
    door = app.state.task_door = PublicOrigin(
        inner,
        public_base_url=state.settings.public_base_url,
        trusted=TrustedProxies(state.settings.trusted_proxies),
    )
    return door
