"""The arq job that delivers one result to its webhook: signed, retried on a schedule.

Isolation: a key's running deliveries are capped by the scheduler (`max_h`); on top, at most
`max_per_host` attempts are in flight to one receiver host across all workers. A delivery
whose host is at that limit goes straight back to the queue for a short, jittered while (no
attempt counted), so waiting for a slow host never holds a worker slot or a connection.
The limit lives in Redis rather than per process so that it means the same whatever the
number of workers (it protects receivers, and the worker fleet, from one slow host); holds
lapse after the attempt's deadline, so a killed worker's are given back. Each worker's pool
has a connection for every job it can run, so no delivery ever waits for a connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, replace

import httpx
import structlog
from redis.exceptions import RedisError

from core import tracing
from core.deliveries import DeliveryState, DeliveryStore, PendingDelivery
from core.http_guard import GuardedClient
from core.keys import TaskRef
from core.outbound import OutboundRefused, split_url
from core.scheduler import LeaseLost
from core.webhooks import RetrySchedule, WebhookSecrets, message_id, signature_header
from worker import metrics as worker_metrics
from worker.context import JobContext
from worker.providers.base import parse_retry_after

log = structlog.get_logger("taskwire.webhooks")
USER_AGENT = "taskwire-webhooks/1.0"
# How long recording an attempt's outcome rides out a Redis outage (within the job timeout).
RECORD_DEADLINE_S = 20.0
# A host slot is held this long past the attempt's deadline at most (a crashed worker's).
HOLD_MARGIN_S = 5.0


@dataclass(slots=True)
class AttemptResult:
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


@dataclass(slots=True)
class WebhookDeliverer:
    deliveries: DeliveryStore
    secrets: WebhookSecrets
    client: GuardedClient
    schedule: RetrySchedule
    max_response_bytes: int = 4096
    max_per_host: int = 50
    host_busy_delay_s: float = 1.0

    async def hold_host(self, ref: TaskRef, index: int, host: str, token: str = "") -> bool:
        """A slot for one attempt to `host`; False: the delivery was put back in the queue.
        LeaseLost if another claim holds the job (`token` is this run's claim's)."""
        return await self.deliveries.hold_host(
            ref,
            index,
            host,
            self.max_per_host,
            self.client.deadline_s + HOLD_MARGIN_S,
            self.host_busy_delay_s * random.uniform(0.5, 1.5),
            token,
        )

    async def attempt(self, url: str, msg_id: str, owner: str, body: bytes) -> AttemptResult:
        """POST once. The timestamp (and so the signature) is fresh on every attempt. Any
        failure but storage trouble is a failed attempt, never an exception that would
        lose the delivery job."""
        secret = await self.secrets.get(owner)
        try:
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature_header(secret.in_use(), msg_id, timestamp, body),
            }
            response = await self.client.request(
                "POST", url, content=body, headers=headers, max_body_bytes=self.max_response_bytes
            )
        except OutboundRefused as exc:
            return AttemptResult(error=f"refused by the outbound guard: {exc}")
        except TimeoutError:
            return AttemptResult(error=f"no answer within {self.client.deadline_s:g} s")
        except httpx.HTTPError as exc:
            return AttemptResult(error=f"connection failed ({type(exc).__name__})")
        except RedisError:
            raise
        except Exception as exc:
            log.exception("webhook.attempt_crashed", webhook_id=msg_id)
            return AttemptResult(error=f"the attempt failed ({type(exc).__name__})")
        retry_after = None
        if response.status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("retry-after"))
        return AttemptResult(status=response.status, retry_after=retry_after)

    def next_state(
        self, state: DeliveryState, outcome: AttemptResult
    ) -> tuple[DeliveryState, float | None]:
        """The state after an attempt, and the delay before the next one (None: no more)."""
        now = time.time()
        done = replace(
            state,
            attempts=state.attempts + 1,
            cycle=state.cycle + 1,
            last_status=outcome.status,
            last_error=outcome.error,
            next_at=None,
        )
        status = outcome.status
        if status is not None and 200 <= status < 300:
            return replace(done, state="delivered", last_error=None, delivered_at=now), None
        if status == 410:
            return replace(
                done, state="failed", last_error="the receiver answered 410 Gone: delivery stopped"
            ), None
        if status is not None and 300 <= status < 400:
            done = replace(done, last_error=f"redirect ({status}) not followed")
        elif status is not None:
            done = replace(done, last_error=f"the receiver answered {status}")
        delay = self.schedule.delay_before(done.cycle + 1)
        if delay is None:
            return replace(done, state="failed"), None
        if outcome.retry_after is not None:
            # Honour the receiver's Retry-After, within the schedule's longest wait.
            delay = min(max(delay, outcome.retry_after), max(self.schedule.delays_s))
        return replace(done, next_at=now + delay), delay


async def deliver_webhook(job: JobContext, owner: str, task_uuid: str, index: int) -> None:
    """Attempt one delivery of result `index` and record its outcome (idempotent per state);
    if its receiver host is busy, hand it back to the queue without an attempt."""
    deliverer = job.deps.webhooks
    ref = TaskRef(owner, task_uuid)
    pending = await deliverer.deliveries.load(ref, index)
    if pending is None or pending.state.state != "pending":
        log.info("webhook.nothing_to_deliver", task_uuid=task_uuid, result_index=index)
        return
    host = _host_of(pending.url)
    recorded = False
    try:
        if host and not await deliverer.hold_host(ref, index, host, job.token):
            job.settled = True
            log.debug("webhook.host_busy", task_uuid=task_uuid, result_index=index, host=host)
            return
        # the task's trace (its API request), read only when tracing is on
        carrier = await job.deps.store.trace_carrier(ref) if tracing.active() else None
        await _attempt(deliverer, ref, index, pending, host, carrier, job.token)
        recorded = job.settled = True
    except LeaseLost:
        # Another worker holds this delivery now (this run's lease lapsed): its attempt is
        # that worker's to record; this run changes nothing (its host hold, if any, lapses).
        recorded = True
        job.lose_lease()
        log.warning("webhook.lease_lost", task_uuid=task_uuid, result_index=index)
    finally:
        if host and not recorded:
            with contextlib.suppress(RedisError, OSError):  # else the hold lapses by itself
                await deliverer.deliveries.release_host(ref, index, host)


def _host_of(url: str) -> str:
    """The host a URL dials ("" if it cannot be parsed: the attempt is refused anyway)."""
    try:
        return split_url(url).host
    except OutboundRefused:
        return ""


async def _attempt(
    deliverer: WebhookDeliverer,
    ref: TaskRef,
    index: int,
    pending: PendingDelivery,
    host: str,
    carrier: bytes | None = None,
    token: str = "",
) -> None:
    msg_id = message_id(ref.uuid, index)
    body = json.dumps({"data": [pending.item]}, separators=(",", ":"), ensure_ascii=False).encode()
    started = time.monotonic()
    span = tracing.start_span("webhook.attempt", _span_start(ref, index, pending), carrier)
    outcome = await deliverer.attempt(pending.url, msg_id, ref.owner, body)
    state, retry_in = deliverer.next_state(pending.state, outcome)
    worker_metrics.webhook_attempt(outcome.status, state.state, pending.state.next_at, started)
    tracing.end_span(span, _span_outcome(outcome, state), error=state.last_error)
    await _record(deliverer.deliveries, ref, index, state, retry_in, host, token)
    log.info(
        "webhook.attempt",
        task_uuid=ref.uuid,
        result_index=index,
        webhook_id=msg_id,
        attempt=state.attempts,
        status=outcome.status,
        error=state.last_error,
        state=state.state,
        retry_in_s=None if retry_in is None else round(retry_in, 3),
        latency_ms=round((time.monotonic() - started) * 1000, 2),
    )


def _span_start(ref: TaskRef, index: int, pending: PendingDelivery) -> dict[str, str | int]:
    return {
        "taskwire.task_uuid": ref.uuid,
        "taskwire.result_index": index,
        "taskwire.attempt": pending.state.attempts + 1,
    }


def _span_outcome(outcome: AttemptResult, state: DeliveryState) -> dict[str, str | int]:
    found: dict[str, str | int] = {"taskwire.delivery_state": state.state}
    if outcome.status is not None:
        found["http.response.status_code"] = outcome.status
    return found


async def _record(
    deliveries: DeliveryStore,
    ref: TaskRef,
    index: int,
    state: DeliveryState,
    retry_in: float | None,
    host: str,
    token: str = "",
) -> None:
    """Store an attempt's outcome, riding out a short Redis outage (the write is idempotent;
    past the deadline the job fails, and the sweep finds the delivery again)."""
    delay = 0.05
    deadline = time.monotonic() + RECORD_DEADLINE_S
    while True:
        try:
            await deliveries.record(ref, index, state, retry_in, host, token)
            return
        except (RedisError, OSError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("webhook.store_retry", error=type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def sweep_overdue(deliveries: DeliveryStore, interval_s: float) -> None:
    """Forever: every `interval_s`, if no other worker has this interval, enqueue again the
    pending deliveries overdue by more than an interval whose job was lost."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            if not await deliveries.claim_sweep(interval_s):
                continue
            revived = await deliveries.revive_overdue(interval_s)
        except (RedisError, OSError) as exc:
            log.warning("webhook.sweep_failed", error=type(exc).__name__)
            continue
        if revived:
            log.warning("webhook.revived", jobs=len(revived), job_ids=revived[:10])
