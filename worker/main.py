"""Builds and runs a taskwire worker: `python -m worker` (settings from TASKWIRE_* env)."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import httpx
import structlog
import uvloop
from arq.connections import ArqRedis
from arq.worker import func
from redis.asyncio import ConnectionPool

from core.catalog import Catalog
from core.deliveries import DeliveryStore
from core.http_guard import FetchLimits, GuardedClient
from core.httpclient import CookielessClient
from core.images import ImageStore
from core.keys import DELIVER_WEBHOOK_JOB, RUN_RESULT_JOB, Keys
from core.logging import configure_logging
from core.outbound import OutboundPolicy
from core.scheduler import Fairness, Scheduler
from core.settings import Settings
from core.store import TaskStore
from core.tokens import ImageTokens, load_secret
from core.tracing import setup_tracing, shutdown_tracing
from core.webhooks import RetrySchedule, WebhookSecrets
from worker.admission import LagMonitor
from worker.images import ImageResolver
from worker.inference import Inference
from worker.jobs import WorkerDeps, run_result
from worker.probes import ProbeServer, WorkerHealth
from worker.providers.base import Adapter
from worker.providers.openai_chat import chat_adapter
from worker.providers.openai_responses import responses_adapter
from worker.providers.runware import runware_adapter
from worker.providers.segmind import SegmindAdapter
from worker.providers.transport import ProviderTransport
from worker.queue import QueueWorker, job_function, json_deserializer, json_serializer
from worker.retry import RetryPolicy
from worker.routing import RouteHealth
from worker.webhooks import WebhookDeliverer, deliver_webhook, sweep_overdue

log = structlog.get_logger("taskwire.worker")


def build_adapters(settings: Settings) -> dict[str, Adapter]:
    timeout = settings.upstream_connect_timeout_s
    return {
        "openai-chat": chat_adapter(timeout),
        "openai-responses": responses_adapter(timeout),
        "segmind": SegmindAdapter(timeout),
        "runware": runware_adapter(timeout),
    }


async def on_startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    keys = Keys(settings.key_prefix, settings.queue_name)
    limits = httpx.Limits(
        max_connections=settings.upstream_max_connections,
        max_keepalive_connections=settings.upstream_max_connections,
    )
    client = CookielessClient(  # the provider calls of every tenant: no cookie jar
        # aiohttp's transport under httpx: trusted provider URLs only (worker/providers/
        # transport.py); user URLs go through the guarded clients below
        transport=ProviderTransport(limits=limits),
        limits=limits,
        timeout=httpx.Timeout(60.0, connect=settings.upstream_connect_timeout_s),
        follow_redirects=False,
    )
    ctx["http"] = client
    policy = OutboundPolicy(settings.outbound_allow_cidrs)
    # Each running job makes at most one request through each client at a time, so pools of
    # worker_max_jobs connections never make a delivery or a fetch wait for a connection.
    guarded = GuardedClient(
        policy,
        deadline_s=settings.webhook_timeout_s,
        max_connections=max(settings.worker_max_jobs, 200),
    )
    image_client = GuardedClient(
        policy,
        deadline_s=settings.image_fetch_timeout_s,
        max_connections=max(settings.worker_max_jobs, settings.image_fetch_max_connections),
        limits=FetchLimits(settings.image_fetch_per_key, settings.image_fetch_per_host),
    )
    ctx["image_http"] = image_client
    ctx["guarded_http"] = guarded
    ctx["deps"] = WorkerDeps(
        settings=settings,
        store=TaskStore(
            ctx["redis"],
            keys,
            retention_s=settings.task_retention_s,
            max_queue_depth=settings.max_queue_depth,
            max_queued_per_key=settings.key_max_queued,
            event_maxlen=settings.event_stream_maxlen,
        ),
        inference=Inference(
            Catalog.load(settings.catalog_path),
            client,
            build_adapters(settings),
            RetryPolicy(
                max_attempts=settings.upstream_max_attempts,
                base_s=settings.upstream_backoff_base_s,
                cap_s=settings.upstream_backoff_cap_s,
                retry_after_cap_s=settings.upstream_retry_after_cap_s,
            ),
            RouteHealth(
                ctx["redis"],
                keys,
                threshold=settings.route_failure_threshold,
                cooldown_s=settings.route_cooldown_s,
            ),
            ImageResolver(
                ImageStore(ctx["redis"], keys, settings.task_retention_s),
                image_client,
                settings.image_max_bytes,
                tokens=ImageTokens(
                    await load_secret(ctx["redis"], settings), settings.task_retention_s
                ),
                public_base_url=settings.public_base_url,
            ),
        ),
        webhooks=WebhookDeliverer(
            deliveries=DeliveryStore(
                ctx["redis"],
                keys,
                retention_s=settings.task_retention_s,
                schedule_s=sum(settings.webhook_schedule_s),
            ),
            secrets=WebhookSecrets(ctx["redis"], keys),
            client=guarded,
            schedule=RetrySchedule(tuple(settings.webhook_schedule_s), settings.webhook_jitter),
            max_response_bytes=settings.webhook_max_response_bytes,
            max_per_host=settings.webhook_max_per_host,
            host_busy_delay_s=settings.webhook_host_busy_delay_s,
        ),
    )
    ctx["webhook_sweep"] = asyncio.create_task(
        sweep_overdue(ctx["deps"].webhooks.deliveries, settings.webhook_sweep_interval_s),
        name="webhook-sweep",
    )


async def on_shutdown(ctx: dict[str, Any]) -> None:
    sweep: asyncio.Task[None] | None = ctx.get("webhook_sweep")
    if sweep is not None:
        sweep.cancel()
    client: httpx.AsyncClient | None = ctx.get("http")
    if client is not None:
        await client.aclose()
    for name in ("guarded_http", "image_http"):
        guarded: GuardedClient | None = ctx.get(name)
        if guarded is not None:
            await guarded.aclose()
    shutdown_tracing()  # exports the spans still buffered
    log.info("worker.stopped")


def fairness(settings: Settings) -> Fairness:
    return Fairness(
        batch_share=settings.batch_min_share,
        weight=settings.key_weight,
        max_running=settings.key_max_running,
        max_deliveries=settings.key_max_deliveries,
    )


# arq's try limit for result jobs: far past job_max_tries (see build_worker)
RESULT_TRIES_BACKSTOP = 1000


def build_worker(settings: Settings) -> QueueWorker:
    keys = Keys(settings.key_prefix, settings.queue_name)
    redis = ArqRedis(
        ConnectionPool.from_url(
            settings.redis_url, socket_connect_timeout=5, socket_keepalive=True
        ),
        job_serializer=json_serializer,
        job_deserializer=json_deserializer,
        default_queue_name=settings.queue_name,
    )
    # arq's own timeout is a backstop: the job enforces job_timeout_s itself and records an
    # error result, which arq's timeout could not do.
    backstop_s = settings.job_timeout_s + 30
    return QueueWorker(
        functions=[
            func(
                job_function(deliver_webhook),
                name=DELIVER_WEBHOOK_JOB,
                timeout=settings.webhook_timeout_s + 30,
                keep_result=0,
                # attempts are scheduled by the job itself; tries also count crash re-runs
                max_tries=3 * len(settings.webhook_schedule_s) + 10,
            ),
            func(
                job_function(run_result),
                name=RUN_RESULT_JOB,
                timeout=backstop_s,
                keep_result=0,
                # run_result enforces job_max_tries itself and records an error result past
                # it; arq's limit is a backstop that must never be reached first (arq gives up
                # with nothing recorded, and the task would stay processing)
                max_tries=RESULT_TRIES_BACKSTOP,
            ),
        ],
        queue_name=settings.queue_name,
        redis_pool=redis,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        max_jobs=settings.worker_max_jobs,
        job_timeout=backstop_s,
        keep_result=0,
        poll_delay=settings.worker_poll_fallback_s,
        max_tries=settings.job_max_tries + 1,
        health_check_interval=10,
        job_completion_wait=settings.worker_shutdown_grace_s,
        job_serializer=json_serializer,
        job_deserializer=json_deserializer,
        ctx={"settings": settings},
        scheduler=Scheduler(redis, keys, settings.job_lease_s, fairness(settings)),
        admission=LagMonitor(
            batch_lag_s=settings.worker_batch_lag_s,
            interactive_lag_s=settings.worker_interactive_lag_s,
        ),
        classes=settings.worker_classes,
        health=WorkerHealth(
            liveness_timeout_s=settings.worker_liveness_timeout_s,
            redis_stale_s=max(10.0, 3 * settings.worker_poll_fallback_s),
        ),
        worker_key=f"{keys.workers}:{socket.gethostname()}:{os.getpid()}",
    )


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, process="worker")
    setup_tracing("worker", settings.trace_file)  # off unless OTEL_* (or the trace file) say
    if settings.worker_nice:
        os.nice(settings.worker_nice)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = build_worker(settings)
    probes = None
    if settings.worker_http_port:
        # bound before the worker starts, so a port in use fails the process at once
        probes = ProbeServer(
            settings.worker_http_host,
            settings.worker_http_port,
            worker.health,
            settings.metrics_token,
        ).start()
    try:
        worker.run()
    finally:
        if probes is not None:
            probes.stop()
