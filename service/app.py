"""The FastAPI application factory and its lifespan (Redis, event hub, catalog, key ring)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from core.apikeys import ApiKeyStore
from core.catalog import Catalog
from core.deliveries import DeliveryStore
from core.errors import InvalidRequest, ServiceUnavailable, TaskwireError
from core.events import EventHub
from core.http_guard import FetchLimits, GuardedClient
from core.images import ImageStore
from core.keys import Keys
from core.limits import BucketDefaults, ReadBucket
from core.logging import configure_logging
from core.metrics import QueueExporter
from core.outbound import OutboundPolicy
from core.settings import Settings
from core.store import TaskStore
from core.tokens import ImageTokens, StreamTokens, load_secret
from core.tracing import TracingMiddleware
from core.tracing import active as tracing_active
from core.webhooks import WebhookSecrets
from service.admin_api import router as admin_router
from service.api import TASK_PATHS, error_response, json_response, router, task_door
from service.auth import KeyRing, KeyRingSync
from service.console import router as console_router
from service.events_api import router as events_router
from service.health import Lifecycle, lifecycle
from service.health import router as health_router
from service.images import Images
from service.images_api import router as images_router
from service.limits import apply_key_limits, override_owners
from service.metrics import configure as configure_metrics
from service.metrics import router as metrics_router
from service.openai_chat import router as openai_chat_router
from service.openai_common import (
    OpenAIError,
    error_type,
    from_taskwire,
    is_openai_path,
    snake,
)
from service.openai_responses import router as openai_responses_router
from service.origin import PublicOrigin, TrustedProxies
from service.pages import router as pages_router
from service.shedding import LoadShedder
from service.state import AppState
from service.tasks_api import router as tasks_router
from service.tasks_list import router as tasks_list_router
from service.webhooks_api import router as webhooks_router
from service.ws import router as socket_router

log = structlog.get_logger("taskwire.service")


class TaskwireApp(FastAPI):
    """FastAPI, with the hot door `POST /v1` answered by `task_door` (service/api.py), past
    the framework's layers."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in TASK_PATHS
            and not self.root_path
        ):
            door = task_door(self)
            if door is not None:
                await door(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    catalog = Catalog.load(settings.catalog_path)
    keyring = KeyRing(settings.all_api_keys())
    override_owners(settings)  # a bad TASKWIRE_KEY_LIMITS fails here, before serving

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = Redis(
            connection_pool=ConnectionPool.from_url(
                settings.redis_url,
                socket_connect_timeout=5,
                socket_keepalive=True,
                max_connections=512,
            )
        )
        store = TaskStore(
            redis,
            Keys(settings.key_prefix, settings.queue_name),
            retention_s=settings.task_retention_s,
            max_queue_depth=settings.max_queue_depth,
            max_queued_per_key=settings.key_max_queued,
            event_maxlen=settings.event_stream_maxlen,
            rate=BucketDefaults(settings.key_rps, settings.key_burst),
            tokens_per_minute=settings.key_tokens_per_minute,
        )
        await apply_key_limits(redis, store.keys, settings)
        hub = EventHub(redis)
        await hub.start()
        # managed API keys (core/apikeys.py), kept current in memory (service/auth.py)
        app.state.apikeys = ApiKeyStore(redis, store.keys)
        key_sync = KeyRingSync(keyring, app.state.apikeys, hub, settings.key_ring_poll_s)
        await key_sync.start()
        shedder = LoadShedder(
            redis,
            store.keys,
            budget_s=settings.interactive_wait_budget_s,
            refresh_s=settings.shed_refresh_s,
        )
        await shedder.start()
        # the queue's depth on /metrics, from one API process at a time (core/metrics.py)
        app.state.queue_exporter = QueueExporter(
            redis,
            store.keys,
            ttl_s=settings.metrics_queue_lock_ttl_s,
            handover_s=settings.metrics_queue_handover_s,
        )
        await app.state.queue_exporter.start()
        secret = await load_secret(redis, settings)
        tokens = StreamTokens(secret, settings.stream_token_ttl_s)
        image_tokens = ImageTokens(secret, settings.task_retention_s)
        outbound = OutboundPolicy(settings.outbound_allow_cidrs)
        image_client = GuardedClient(
            outbound,
            deadline_s=settings.image_fetch_timeout_s,
            max_connections=settings.image_fetch_max_connections,
            limits=FetchLimits(settings.image_fetch_per_key, settings.image_fetch_per_host),
        )
        app.state.taskwire = AppState(
            settings,
            catalog,
            keyring,
            redis,
            store,
            hub,
            tokens,
            outbound=outbound,
            webhook_secrets=WebhookSecrets(redis, store.keys),
            images=Images(
                ImageStore(redis, store.keys, settings.task_retention_s),
                image_client,
                outbound,
                settings.image_max_bytes,
                settings.outbound_resolve_timeout_s,
                image_tokens,
            ),
            deliveries=DeliveryStore(
                redis,
                store.keys,
                retention_s=settings.task_retention_s,
                schedule_s=sum(settings.webhook_schedule_s),
            ),
            read_bucket=ReadBucket(
                redis,
                store.keys,
                BucketDefaults(settings.key_read_rps, settings.key_read_burst),
            ),
            shedder=shedder,
        )
        log.info("service.started", models=catalog.ids(), api_keys=len(keyring))
        lifecycle(app).started = True
        try:
            yield
        finally:
            lifecycle(app).begin_drain("lifespan shutdown")
            # the fast doors hold this startup's state: a later startup makes its own
            app.state.task_door = app.state.socket_door = None
            await app.state.queue_exporter.close()
            await shedder.close()
            await key_sync.close()
            await hub.close()
            await image_client.aclose()
            # the pool was made here, not by the client: close it too (its connections
            # were left to the garbage collector)
            await redis.aclose(close_connection_pool=True)

    app = TaskwireApp(
        title="taskwire",
        summary="Runware-compatible asynchronous inference task API",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        # No 307 to the slash-less path (its body is not JSON, and clients re-POSTing is not
        # a given): `POST /v1/` is served as `/v1`, any other trailing slash is a JSON 404.
        redirect_slashes=False,
    )
    app.state.lifecycle = Lifecycle()  # /readyz; draining from SIGTERM on (service/health.py)
    if tracing_active():  # a server span per request, continuing a client's traceparent
        app.add_middleware(TracingMiddleware)  # inside PublicOrigin, which copies the scope
    app.add_middleware(
        PublicOrigin,
        public_base_url=settings.public_base_url,
        trusted=TrustedProxies(settings.trusted_proxies),
    )
    app.include_router(router)
    app.include_router(events_router)
    app.include_router(pages_router)
    app.include_router(webhooks_router)
    app.include_router(images_router)
    app.include_router(tasks_router)
    app.include_router(health_router)
    app.include_router(tasks_list_router)
    app.include_router(admin_router)  # 404 unless TASKWIRE_ADMIN_TOKEN is set
    app.include_router(console_router)  # /console and /admin/console/* (service/console.py)
    app.include_router(socket_router)  # GET /v1 upgraded to the task WebSocket (service/ws.py)
    app.include_router(metrics_router)  # GET /metrics (service/metrics.py)
    configure_metrics(key_labels=settings.metrics_key_labels)
    app.include_router(openai_chat_router)  # OpenAI-compatible: /v1/chat/completions
    app.include_router(openai_responses_router)  # and /v1/responses

    @app.get("/health")
    async def health(request: Request) -> Response:
        state: AppState = request.app.state.taskwire
        try:
            await state.redis.ping()
        except (RedisError, OSError):
            return error_response(ServiceUnavailable("Redis is unreachable.", retry_after=2))
        return json_response({"status": "ok"}, 200)

    @app.exception_handler(TaskwireError)
    async def taskwire_error(request: Request, exc: TaskwireError) -> Response:
        if is_openai_path(request.url.path):
            return from_taskwire(exc).response()
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        codes = {404: "notFound", 405: "methodNotAllowed"}
        error = TaskwireError(str(exc.detail), code=codes.get(exc.status_code, "invalidRequest"))
        if is_openai_path(request.url.path):
            response = OpenAIError(
                error.message,
                status=exc.status_code,
                kind=error_type(exc.status_code),
                code=snake(error.code),
            ).response()
        else:
            response = json_response({"errors": [error.to_item()]}, exc.status_code)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = [request_error(error) for error in exc.errors()]
        if is_openai_path(request.url.path) and errors:
            return from_taskwire(errors[0]).response()
        return json_response({"errors": [e.to_item() for e in errors]}, InvalidRequest.status)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        # A bug, not the client's doing: still the door's JSON shape (and logged).
        log.error("service.internal_error", exc_info=exc)
        message = "taskwire failed on this request; it has been logged."
        if is_openai_path(request.url.path):
            return OpenAIError(
                message, status=500, kind="server_error", code="internal_error"
            ).response()
        error = TaskwireError(message)
        return json_response({"errors": [{**error.to_item(), "code": "internalError"}]}, 500)

    return app


def request_error(error: Any) -> InvalidRequest:
    """A FastAPI validation error (query, path or header parameter) as a protocol error that
    names the parameter as the client spelled it (`resultIndex`, not `query.resultIndex`)."""
    loc = [str(part) for part in error.get("loc", ())]
    if loc and loc[0] in ("query", "path", "header", "cookie", "body"):
        loc = loc[1:]
    parameter = ".".join(loc) or None
    name = loc[-1] if loc else "request"
    capital = name[:1].upper() + name[1:]
    if error.get("type") == "missing":
        return InvalidRequest(
            f"Missing required parameter '{parameter}'.",
            code=f"missing{capital}",
            parameter=parameter,
        )
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return InvalidRequest(
        f"Invalid value for '{parameter or 'request'}': {message}.",
        code=f"invalid{capital}",
        parameter=parameter,
    )


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.app:create_app_from_env`."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, process="api")
    return create_app(settings)
