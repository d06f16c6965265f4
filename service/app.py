"""The FastAPI application factory and its lifespan (Redis, event hub, catalog, key ring)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from core.catalog import Catalog
from core.deliveries import DeliveryStore
from core.errors import InvalidRequest, ServiceUnavailable, TaskwireError
from core.events import EventHub
from core.http_guard import GuardedClient
from core.images import ImageStore
from core.keys import Keys
from core.logging import configure_logging
from core.outbound import OutboundPolicy
from core.settings import Settings
from core.store import TaskStore
from core.webhooks import WebhookSecrets
from service.api import error_response, json_response, router
from service.auth import KeyRing
from service.events_api import router as events_router
from service.images import Images
from service.images_api import router as images_router
from service.pages import router as pages_router
from service.state import AppState
from service.tokens import StreamTokens, load_secret
from service.webhooks_api import router as webhooks_router

log = structlog.get_logger("taskwire.service")


def create_app(settings: Settings) -> FastAPI:
    catalog = Catalog.load(settings.catalog_path)
    keyring = KeyRing(settings.all_api_keys())

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
        )
        hub = EventHub(redis)
        await hub.start()
        tokens = StreamTokens(await load_secret(redis, settings), settings.stream_token_ttl_s)
        outbound = OutboundPolicy(settings.outbound_allow_cidrs)
        image_client = GuardedClient(outbound, deadline_s=settings.image_fetch_timeout_s)
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
            ),
            deliveries=DeliveryStore(
                redis,
                store.keys,
                retention_s=settings.task_retention_s,
                schedule_s=sum(settings.webhook_schedule_s),
            ),
        )
        log.info("service.started", models=catalog.ids(), api_keys=len(keyring))
        try:
            yield
        finally:
            await hub.close()
            await image_client.aclose()
            await redis.aclose()

    app = FastAPI(
        title="taskwire",
        summary="Runware-compatible asynchronous inference task API",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.include_router(router)
    app.include_router(events_router)
    app.include_router(pages_router)
    app.include_router(webhooks_router)
    app.include_router(images_router)

    @app.get("/health")
    async def health(request: Request) -> Response:
        state: AppState = request.app.state.taskwire
        try:
            await state.redis.ping()
        except (RedisError, OSError):
            return error_response(ServiceUnavailable("Redis is unreachable.", retry_after=2))
        return json_response({"status": "ok"}, 200)

    @app.exception_handler(TaskwireError)
    async def taskwire_error(_request: Request, exc: TaskwireError) -> Response:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Response:
        codes = {404: "notFound", 405: "methodNotAllowed"}
        error = TaskwireError(str(exc.detail), code=codes.get(exc.status_code, "invalidRequest"))
        response = json_response({"errors": [error.to_item()]}, exc.status_code)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return error_response(InvalidRequest(f"Invalid request: {exc.errors()[0]['msg']}."))

    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.app:create_app_from_env`."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, process="api")
    return create_app(settings)
