"""The arq job that produces one result of one task, idempotently."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog
from redis.exceptions import RedisError

from core.cancel import read_cancel_mark, stop_message
from core.contract import Delta, ErrorItem, ResultItem
from core.errors import TASK_EXPIRED
from core.failures import note_failure
from core.keys import TaskRef
from core.protocol import TextInferenceTask
from core.settings import Settings
from core.store import FinishOutcome, FollowUpJob, TaskStore
from core.tracing import job_scope, span
from worker import metrics as worker_metrics
from worker.context import JobContext, StopSignal
from worker.inference import Inference, InferenceOutcome
from worker.publisher import ResultPublisher
from worker.webhooks import WebhookDeliverer

log = structlog.get_logger("taskwire.jobs")


@dataclass(slots=True)
class WorkerDeps:
    settings: Settings
    store: TaskStore
    inference: Inference
    webhooks: WebhookDeliverer


async def run_result(job_ctx: JobContext, owner: str, task_uuid: str, index: int) -> None:
    """Produce result `index` of a task unless it is already final (arq may run a job twice)."""
    deps = job_ctx.deps
    ref = TaskRef(owner, task_uuid)
    job_try = job_ctx.job_try
    started = time.monotonic()
    started_ms = time.time() * 1000
    with (
        structlog.contextvars.bound_contextvars(
            task_uuid=task_uuid, result_index=index, job_try=job_try
        ),
        job_scope() as traced,
    ):
        prefetched, job = job_ctx.take_prefetched()
        if not prefetched:
            job = await deps.store.load_job_input(ref, index)
        if job is None:
            log.warning("result.task_gone")
            return
        if job.existing_result is not None:
            log.info("result.already_final")
            return
        queue_ms = max(0.0, started_ms - job.created_ms)
        task = TextInferenceTask.model_validate(job.request)
        # the API request's trace: queued since the submit, then this result's span
        traced.start(
            "result.run", job.trace, job.created_ms, _trace_attributes(task, index, job_try)
        )
        stop = job_ctx.stop
        if job.cancel is not None:  # cancelled while this job was being claimed
            stop.request(job.cancel)
        expiry = _arm_deadline(task, job.created_ms, stop)
        publisher = await _publisher(deps, ref, index, job_try, task, job_ctx)
        try:
            outcome = await _produce(deps, task, index, job.seed, publisher, job_try, ref, stop)
            finish = FinishOutcome(written=False, lease_lost=True)
            if not job_ctx.lease_lost:  # (renewing found another claim holding the job)
                delivery = (
                    deps.webhooks.deliveries.first_job(ref, index) if task.webhookURL else None
                )
                with span("result.write"):
                    finish = await _finish(publisher, outcome.item, delivery, _tokens(outcome))
            if finish.lease_lost:
                # Another worker runs this job now (this one's lease lapsed): nothing of this
                # run is recorded, published or counted, and arq's bookkeeping is skipped.
                job_ctx.lose_lease()
                publisher.close()
                log.warning("result.lease_lost", status=outcome.item.status)
                return
            job_ctx.settled = True
            traced.set(_trace_outcome(outcome, finish), error=_error_code(outcome.item))
            if finish.written:  # failed results by code, for the operator console
                await note_failure(deps.store, ref, task.model, outcome.route, outcome.item)
            await deps.inference.recorded(outcome)
        except BaseException:
            publisher.close()
            raise
        finally:
            if expiry is not None:
                expiry.cancel()
        # inside the result's span, so the line carries its trace id
        _log_completion(task, task_uuid, index, job_try, outcome, finish, started, queue_ms)


def _trace_attributes(task: TextInferenceTask, index: int, job_try: int) -> dict[str, str | int]:
    return {
        "taskwire.job_try": job_try,
        "taskwire.task_uuid": task.taskUUID,
        "taskwire.result_index": index,
        "taskwire.model": task.model,
        "taskwire.delivery": task.deliveryMethod,
    }


def _trace_outcome(outcome: InferenceOutcome, finish: FinishOutcome) -> dict[str, str | int]:
    found: dict[str, str | int] = {
        "taskwire.status": outcome.item.status,
        "taskwire.attempts": outcome.attempts,
        "taskwire.recorded": int(finish.written),
    }
    if outcome.route is not None:
        found["taskwire.route"] = outcome.route
    return found


def _error_code(item: ResultItem) -> str | None:
    return item.code if isinstance(item, ErrorItem) else None


async def _publisher(
    deps: WorkerDeps,
    ref: TaskRef,
    index: int,
    job_try: int,
    task: TextInferenceTask,
    job_ctx: JobContext,
) -> ResultPublisher:
    """The result's event writer; a re-run starts from what an earlier run published."""
    settings = deps.settings
    prior_text, prior_reasoning = (
        await _published_so_far(deps.store, ref, index) if job_try > 1 else ("", "")
    )
    return ResultPublisher(
        deps.store,
        ref,
        index,
        job_try,
        eager_first=task.deliveryMethod == "stream",
        interval_s=settings.stream_flush_interval_s,
        max_interval_s=settings.stream_flush_max_interval_s,
        max_chars=settings.stream_flush_chars,
        published_text=prior_text,
        published_reasoning=prior_reasoning,
        job_class=job_ctx.job_class,
        token=job_ctx.token,
    )


def _arm_deadline(
    task: TextInferenceTask, created_ms: float, stop: StopSignal
) -> asyncio.TimerHandle | None:
    """Raise the stop signal (taskExpired) at the task's cancelAfter deadline: now, if it
    has passed; else a timer, which the caller cancels when the job ends."""
    if task.cancelAfter is None:
        return None
    remaining = created_ms / 1000 + task.cancelAfter - time.time()
    if remaining <= 0:
        stop.request(TASK_EXPIRED)
        return None
    return asyncio.get_running_loop().call_later(remaining, stop.request, TASK_EXPIRED)


async def _published_so_far(store: TaskStore, ref: TaskRef, index: int) -> tuple[str, str]:
    """The text and reasoning an earlier run of this result already published."""
    text: list[str] = []
    reasoning: list[str] = []
    for _event_id, event in await store.read_events(ref):
        if isinstance(event, Delta) and event.index == index:
            text.append(event.text)
            reasoning.append(event.reasoning)
    return "".join(text), "".join(reasoning)


async def _produce(
    deps: WorkerDeps,
    task: TextInferenceTask,
    index: int,
    seed: int,
    publisher: ResultPublisher,
    job_try: int,
    ref: TaskRef,
    stop: StopSignal,
) -> InferenceOutcome:
    if stop.code is not None:  # cancelled or expired before it started: no upstream call
        return _stopped(task, index, stop.code)
    limit = deps.settings.job_max_tries
    if job_try > limit:
        return _error_outcome(
            task,
            index,
            "inferenceError",
            f"The task was interrupted {limit} times (workers stopped, crashed or lost "
            "their storage while running it); giving up.",
        )
    should_stop = _stop_check(deps.store, ref, stop)
    try:
        async with asyncio.timeout(deps.settings.job_timeout_s):
            outcome = await _until_stopped(
                deps.inference.run(task, index, seed, publisher, ref.owner, should_stop), stop
            )
    except TimeoutError:
        return _error_outcome(
            task,
            index,
            "timeoutProvider",
            f"The model did not finish within {deps.settings.job_timeout_s:g} s.",
        )
    except (RedisError, OSError):
        raise  # storage trouble: handed back by the seam (worker/queue.py), due again soon
    except Exception:
        log.exception("result.internal_error")
        return _error_outcome(
            task,
            index,
            "inferenceError",
            "taskwire failed while running this task; it has been logged.",
        )
    if outcome is None:
        assert stop.code is not None
        log.info("result.stopped", code=stop.code)
        return _stopped(task, index, stop.code)
    return outcome


async def _until_stopped(
    work: Coroutine[Any, Any, InferenceOutcome], stop: StopSignal
) -> InferenceOutcome | None:
    """The outcome of `work`, or None if the stop signal came first: then `work` is
    cancelled (which closes its upstream stream) before this returns."""
    running = asyncio.ensure_future(work)
    signalled = asyncio.ensure_future(stop.event.wait())
    try:
        await asyncio.wait({running, signalled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
        if not running.done():
            running.cancel()
            await asyncio.wait({running})
    if running.cancelled():
        return None
    return running.result()  # finished (or failed) before it could be stopped


def _stop_check(
    store: TaskStore, ref: TaskRef, stop: StopSignal
) -> Callable[[], Awaitable[str | None]]:
    """What inference asks before each upstream attempt: the stop signal's code, if raised.
    Before a retry or a fallback it also reads the task's cancel mark (a cancel message this
    worker missed must not let another upstream call start)."""
    first = True

    async def should_stop() -> str | None:
        nonlocal first
        if stop.code is None and not first:
            mark = await read_cancel_mark(store, ref)
            if mark is not None:
                stop.request(mark)
        first = False
        return stop.code

    return should_stop


def _stopped(task: TextInferenceTask, index: int, code: str) -> InferenceOutcome:
    return _error_outcome(task, index, code, stop_message(code, task.cancelAfter))


def _error_outcome(
    task: TextInferenceTask, index: int, code: str, message: str
) -> InferenceOutcome:
    return InferenceOutcome(
        item=ErrorItem(task.taskUUID, index, code, message), route=None, attempts=0
    )


async def _finish(
    publisher: ResultPublisher, item: ResultItem, then: FollowUpJob | None, usage_tokens: int
) -> FinishOutcome:
    """Write the final result (and enqueue its webhook delivery, and count its upstream
    tokens against the key's tokens per minute), riding out a short Redis outage (the write
    is idempotent: a result already recorded is neither written nor counted again)."""
    delay = 0.05
    deadline = time.monotonic() + 30
    while True:
        try:
            return await publisher.finish(item, then, usage_tokens)
        except (RedisError, OSError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("result.store_retry", error=type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def _tokens(outcome: InferenceOutcome) -> int:
    """The upstream tokens a result used (prompt + completion), for tokens per minute."""
    usage = outcome.usage
    return 0 if usage is None else usage.prompt_tokens + usage.completion_tokens


def _log_completion(
    task: TextInferenceTask,
    task_uuid: str,
    index: int,
    job_try: int,
    outcome: InferenceOutcome,
    finish: FinishOutcome,
    started: float,
    queue_ms: float,
) -> None:
    item = outcome.item
    usage = outcome.usage
    if finish.written:
        worker_metrics.result(task.model, outcome.route, item, outcome.routes_tried)
    log.info(
        "result.finished",
        task_uuid=task_uuid,
        result_index=index,
        job_try=job_try,
        model=task.model,
        route=outcome.route,
        routes_tried=outcome.routes_tried if len(outcome.routes_tried) > 1 else None,
        attempts=outcome.attempts,
        status=item.status,
        error_code=item.code if isinstance(item, ErrorItem) else None,
        latency_ms=round((time.monotonic() - started) * 1000, 2),
        queue_ms=round(queue_ms, 2),
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        reasoning_tokens=usage.reasoning_tokens if usage else None,
        cached_tokens=usage.cached_tokens if usage else None,
        usage_estimated=outcome.usage_estimated or None,
        recorded=finish.written,
    )
    if finish.written and finish.done == finish.number_results:
        status = (
            "success"
            if finish.errors == 0
            else ("error" if finish.errors == finish.number_results else "partial")
        )
        log.info(
            "task.finished",
            task_uuid=task_uuid,
            model=task.model,
            results=finish.number_results,
            errors=finish.errors,
            status=status,
            latency_ms=round(time.time() * 1000 - finish.created_ms, 2),
            delivery=task.deliveryMethod,
        )
