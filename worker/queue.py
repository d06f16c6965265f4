"""arq's Worker with the defaults this product cannot live with replaced: the one module that
depends on arq's internals (tests/unit/test_arq_seam.py fails loudly if an upgrade moves them).

arq (0.26-0.28) polls one FIFO queue every 0.5 s, claims jobs with four round trips each,
holds a job's in-progress key for the whole job timeout, hands jobs a dict of string keys, and
exits on the first Redis error. Here:

* **Wake-ups, not polling.** Enqueuers publish on `<queue>:wake`; the worker waits on that
  (with a slow fallback poll), so a job starts within a millisecond or two of its enqueue.
* **A tenant-aware queue** (core/scheduler.py): one Lua call claims a batch of due jobs in
  class and fairness order, each with a lease the worker renews while the job runs, and
  prefetches their task records. A SIGKILLed worker's jobs become visible again when the
  lease runs out, whatever the job timeout; arq's own queue set is never used.
* **A typed job context** (worker/context.py): job functions are registered through
  `job_function`, which builds a `JobContext` from arq's ctx dict.
* **Settled by the job.** A result job settles its arq job in the same script that records
  its result, so arq's own finish round trip is skipped for it.
* **No start transaction.** The claim script reads each job's arq payload and counts its
  try (what arq's run_job does in a MULTI of its own), and `run_job` here runs the job from
  what the claim returned: arq's steps, in arq's order, minus that round trip and its
  per-job log formatting.
* **Claim tokens.** Each run carries its claim's token (a context variable set when the run
  starts, so two runs of one job id in this process never mix them up) to every script that
  acts on its lease: renewals, settling, hand-backs, the result's and deliveries' records.
  A script that answers "lease lost" (another claim holds the job) changed nothing; the run
  is stopped and dropped, arq's own bookkeeping skipped, so a worker that was cut off for
  longer than a lease never settles, records or re-queues a job another worker now runs.
* **Cancels reach running jobs.** Workers listen on the cancel channel (core/cancel.py
  publishes the job ids of running results it marked) beside the wake-ups, on the same
  connection, and raise the job's stop signal; after a (re)subscribe they look for marks set
  while they were not listening.
* **Redis outages are survived.** Errors in the loop are logged and retried with backoff;
  the wake-up subscription reconnects by itself.
* **Graceful stop.** SIGTERM stops claiming, lets running jobs finish within the grace
  period, and hands back (makes immediately visible) whatever had to be cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import structlog
from arq.constants import keep_cronjob_progress, retry_key_prefix
from arq.jobs import SerializationError, deserialize_job_raw, serialize_result
from arq.typing import WorkerCoroutine
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import JobExecutionFailed, Retry, RetryJob, Worker
from redis.exceptions import RedisError

from core.errors import TASK_CANCELLED
from core.scheduler import HOOK, ClaimedJob, Lease, Scheduler, member, now_ms
from worker import metrics as worker_metrics
from worker.admission import ALL_CLASSES, INTERACTIVE_ONLY, LagMonitor
from worker.context import Claim, JobContext
from worker.probes import WorkerHealth

log = structlog.get_logger("taskwire.worker")


class QueueWorker(Worker):
    """arq Worker woken by pub/sub, with leased claims and Redis-outage survival."""

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        worker_key: str,
        admission: LagMonitor | None = None,
        classes: str = ALL_CLASSES,
        health: WorkerHealth | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.scheduler = scheduler
        # This worker's own liveness and readiness (worker/probes.py), never a shared key.
        self.health = health or WorkerHealth()
        self.health.draining = lambda: not self.allow_pick_jobs  # arq clears it on SIGTERM
        # Takes new work only while the loop keeps up (worker/admission.py).
        self.admission = admission or LagMonitor()
        self.classes = classes  # the job classes this worker takes
        self._held_back = False
        # arq sets in-progress keys for job_timeout + 10 s; ours are leases, renewed below.
        self.in_progress_timeout_s = scheduler.lease_ms / 1000
        self._worker_key = worker_key
        self._wake: asyncio.Event | None = None
        self._saturated = False
        self._next_due: float | None = None
        self._background: list[asyncio.Task[None]] = []
        # What the claim knew of each running job, and the contexts handed to job functions
        # (a job that settled itself says so there, and arq's bookkeeping is skipped).
        self.claims: dict[str, Claim] = {}
        self.contexts: dict[str, JobContext] = {}
        # Every run in progress, by claim token, with its job id (what renewals extend).
        self._runs: dict[str, tuple[str, Claim]] = {}
        # Cancels heard for jobs not (yet) started here, by job id: a claim's reply and the
        # cancel message that follows it may arrive in either order.
        self._cancels_heard: dict[str, float] = {}
        self.ctx[_WORKER] = self

    # --- main loop

    async def main(self) -> None:
        self._wake = asyncio.Event()
        # the heartbeat ticks from the start: waiting for Redis is not being stuck
        heartbeat = asyncio.create_task(self.health.run(), name="worker-heartbeat")
        await self._wait_for_redis()
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        await self._register()
        self.health.started = True
        self._background = [
            heartbeat,
            asyncio.create_task(self._listen_for_wakeups(), name="worker-wakeups"),
            asyncio.create_task(self._renew_leases(), name="worker-leases"),
            asyncio.create_task(self.admission.run(), name="worker-lag-monitor"),
        ]
        log.info(
            "worker.started",
            queue=self.queue_name,
            max_jobs=self.max_jobs,
            lease_s=self.in_progress_timeout_s,
            classes=self.classes,
        )
        backoff = 0.05
        try:
            while True:
                self._wake.clear()
                try:
                    await self._poll_iteration()
                except (RedisError, OSError) as exc:
                    self.health.redis_failed()
                    log.warning(
                        "worker.redis_unavailable",
                        error=type(exc).__name__,
                        retry_in_s=round(backoff, 2),
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                self.health.redis_ok()
                backoff = 0.05
                wait = self.poll_delay_s
                if self._held_back:
                    # work was left queued because the loop is busy: look again soon
                    wait = self.admission.interval_s * 2
                if self._next_due is not None:
                    # a scheduled retry or a lapsing lease: look again right when it is due
                    wait = min(wait, max(self._next_due - time.time(), 0.001))
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancel that
                # lands in the loop turn a wake-up arrives in, so a worker stopping under load
                # (arq cancels this task once its jobs end) could run on until SIGKILL
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
        finally:
            for task in self._background:
                task.cancel()

    async def _wait_for_redis(self) -> None:
        if self._pool is None:
            raise RuntimeError("QueueWorker needs a redis_pool")
        delay = 0.1
        while True:
            try:
                await self.pool.ping()
                self.health.redis_ok()
                return
            except (RedisError, OSError) as exc:
                log.warning("worker.waiting_for_redis", error=type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _poll_iteration(self) -> None:
        self._held_back = False
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            free = self.max_jobs - self.job_counter
            classes = "".join(c for c in self.admission.classes() if c in self.classes)
            if len(classes) < len(self.classes):  # the loop lags: some work stays queued
                worker_metrics.held_back(classes)
            # Batch work is taken in small steps, each after a look at the loop's lag, so
            # the worker grows into its capacity instead of leaping past it.
            step = free if classes == INTERACTIVE_ONLY else min(free, self.admission.batch_step)
            self._held_back = classes != self.classes
            if classes:
                claimed, self._next_due = await self.scheduler.claim(step, classes)
                for job in claimed:
                    self._start(job)
                self._saturated = len(claimed) >= step
                # a full small step may have left due work queued: look again soon (a
                # short step that came back short left nothing due for these classes)
                self._held_back = self._held_back or (step < free and self._saturated)
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                if not task.cancelled() and task.exception() is not None:
                    # arq's own bookkeeping failed (typically Redis went away at the end of a
                    # job). The job stays queued and runs again when its lease lapses.
                    log.warning(
                        "worker.job_bookkeeping_failed",
                        job_id=job_id,
                        error=type(task.exception()).__name__,
                    )
        await self.heart_beat()

    def _start(self, job: ClaimedJob) -> None:
        self.job_counter += 1
        job_id = job.job_id
        claim = Claim(
            job.job_class,
            job.job_input,
            prefetched=True,
            token=job.token,
            payload=job.payload,
            job_try=job.job_try,
        )
        self.claims[job_id] = claim
        self._runs[job.token] = (job_id, claim)
        if self._cancels_heard.pop(job_id, None) is not None:
            claim.stop.request(TASK_CANCELLED)
        # the run (arq's run_job, the job function, arq's finish hooks) sees its own claim
        run = contextvars.copy_context()
        run.run(_RUN.set, claim)
        task = self.loop.create_task(self.run_job(job_id, now_ms()), context=run)
        task.add_done_callback(lambda _task: self._job_done(job_id, claim))
        worker_metrics.job_started(job.job_class)
        task.add_done_callback(lambda _task: worker_metrics.job_ended(job.job_class))
        previous = self.tasks.get(job_id)
        if previous is not None and not previous.done():
            # a lapsed run of this job id, still ending: kept where arq's shutdown cancels
            # and its poll reaps tasks (any key will do there), not overwritten
            self.tasks[f"{job_id}|lapsed|{id(previous)}"] = previous
        self.tasks[job_id] = task

    def _job_done(self, job_id: str, claim: Claim) -> None:
        self.job_counter -= 1
        self._runs.pop(claim.token, None)
        # the same job id may have been claimed again here (after a lapsed lease): forget
        # only this run's state
        if self.claims.get(job_id) is claim:
            del self.claims[job_id]
        context = self.contexts.get(job_id)
        if context is not None and context.claim is claim:
            del self.contexts[job_id]
        # a full claim may have left work queued; a tenant parked at its running limit may
        # come back now that one of its jobs settled
        if (self._saturated or self.scheduler.parked) and self._wake is not None:
            self._wake.set()

    # --- wake-ups and leases

    async def _listen_for_wakeups(self) -> None:
        """Wake-ups and cancels, on one pub/sub connection per worker."""
        assert self._wake is not None
        keys = self.scheduler.keys
        cancels = keys.cancels.encode()
        backoff = 0.05
        while True:
            try:
                async with self.pool.pubsub() as pubsub:
                    await pubsub.subscribe(keys.wake, keys.cancels)
                    self._wake.set()  # after a (re)connect, look at the queue at once
                    await self._recheck_cancel_marks()
                    backoff = 0.05
                    while True:
                        message = await pubsub.get_message(timeout=None)
                        if message is None or message["type"] != "message":
                            continue
                        if message["channel"] == cancels:
                            self._cancel_heard(message["data"].decode())
                        else:
                            self._wake.set()
            except (RedisError, OSError) as exc:
                log.warning("worker.wakeups_disconnected", error=type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _cancel_heard(self, job_id: str) -> None:
        claim = self.claims.get(job_id)
        if claim is not None:
            log.info("result.cancel_heard", job_id=job_id)
            claim.stop.request(TASK_CANCELLED)
            return
        now = time.monotonic()
        self._cancels_heard = {
            heard: at for heard, at in self._cancels_heard.items() if now - at < _HEARD_FOR_S
        }
        self._cancels_heard[job_id] = now

    async def _recheck_cancel_marks(self) -> None:
        """Cancel marks set on the tasks of running results while no message could arrive."""
        running = [job_id for job_id in self.claims if not job_id.endswith(":webhook")]
        if not running:
            return
        keys = self.scheduler.keys
        async with self.pool.pipeline(transaction=False) as pipe:
            for job_id in running:
                pipe.hget(keys.task_head + job_id.rpartition(":")[0] + "}", "cancel")
            marks = await pipe.execute()
        for job_id, mark in zip(running, marks, strict=True):
            claim = self.claims.get(job_id)
            if mark is not None and claim is not None:
                claim.stop.request(mark.decode())

    async def _renew_leases(self) -> None:
        interval = self.in_progress_timeout_s / 3
        while True:
            await asyncio.sleep(interval)
            runs = [
                (job_id, claim)
                for job_id, claim in self._runs.values()
                if not (claim.settled or claim.lost)
            ]
            try:
                await self._register(len(runs))
                lost = await self.scheduler.renew(
                    [Lease(member(claim.job_class, job_id), claim.token) for job_id, claim in runs]
                )
            except (RedisError, OSError) as exc:
                log.warning("worker.lease_renewal_failed", error=type(exc).__name__, jobs=len(runs))
                continue
            for job_id, claim in runs:
                if claim.token in lost and not claim.settled:
                    self._lease_lost(job_id, claim, "renew")

    def _lease_lost(self, job_id: str, claim: Claim, step: str) -> None:
        """Another claim holds the job (this one's lease lapsed): stop the run, leave no
        trace of it."""
        if not claim.lost:
            log.warning("worker.lease_lost", job_id=job_id, step=step, token=claim.token)
        claim.lose()

    async def _register(self, running: int = 0) -> None:
        """Announce this worker and its load; the key lapses soon after the worker dies."""
        await self.pool.set(
            self._worker_key, str(running), ex=max(int(self.in_progress_timeout_s * 2), 3)
        )

    # --- arq's run_job, from what the claim read

    async def run_job(self, job_id: str, score: int) -> None:
        """arq's run_job (0.26-0.28), its steps in its order, for a job whose claim read the
        job's payload and counted its try (so arq's MULTI [GET job, INCR retry, EXPIRE
        retry] is not sent again). Jobs not started by a claim go to arq's own."""
        claim = _RUN.get()
        if claim is None or claim.job_try < 1 or self.allow_abort_jobs:
            await super().run_job(job_id, score)
            return
        start_ms = timestamp_ms()
        raw, job_try = claim.payload, claim.job_try
        claim.payload = None
        function_name, enqueue_time_ms = "<unknown>", 0
        args: tuple[Any, ...] = ()
        kwargs: dict[Any, Any] = {}

        async def job_failed(exc: BaseException) -> None:
            self.jobs_failed += 1
            data = self._result_data(
                job_id, function_name, args, kwargs, job_try, enqueue_time_ms, False, exc, start_ms
            )
            await asyncio.shield(self.finish_failed_job(job_id, data))

        if not raw:
            log.warning("worker.job_expired", job_id=job_id)
            await job_failed(JobExecutionFailed("job expired"))
            return
        try:
            function_name, args, kwargs, enqueue_job_try, enqueue_time_ms = deserialize_job_raw(
                raw, deserializer=self.job_deserializer
            )
        except SerializationError as exc:
            log.exception("worker.job_undecodable", job_id=job_id)
            await job_failed(exc)
            return
        function = self.functions.get(function_name)
        if function is None:
            log.warning("worker.job_function_unknown", job_id=job_id, function=function_name)
            await job_failed(JobExecutionFailed(f"function {function_name!r} not found"))
            return
        keep_in_progress = keep_cronjob_progress if hasattr(function, "next_run") else None
        if enqueue_job_try and enqueue_job_try > job_try:
            job_try = enqueue_job_try
            await self.pool.setex(retry_key_prefix + job_id, 88400, str(job_try))
        max_tries = self.max_tries if function.max_tries is None else function.max_tries
        if job_try > max_tries:
            log.warning("worker.job_out_of_tries", job_id=job_id, max_tries=max_tries)
            await job_failed(JobExecutionFailed(f"max {max_tries} retries exceeded"))
            return

        result: Any = _NO_RESULT
        finish = False
        incr_score: int | None = None
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        ctx = {
            **self.ctx,
            "job_id": job_id,
            "job_try": job_try,
            "enqueue_time": ms_to_datetime(enqueue_time_ms),
            "score": score,
        }
        if self.on_job_start:
            await self.on_job_start(ctx)
        start_ms = timestamp_ms()
        success = False
        try:
            # a task of its own (it copies this run's context, and so its claim), as arq does
            self.job_tasks[job_id] = task = self.loop.create_task(
                function.coroutine(ctx, *args, **kwargs)
            )
            try:
                async with asyncio.timeout(timeout_s):
                    result = await task
            finally:
                # a lapsed run of this job id may end after a newer run of it started here
                if self.job_tasks.get(job_id) is task:
                    del self.job_tasks[job_id]
        except (Exception, asyncio.CancelledError) as exc:
            if self.retry_jobs and isinstance(exc, Retry):
                # a delay from now: finish_job's hand-back makes the job due at now + this
                # (arq adds the run's time because it moves the job's old queue score)
                incr_score = exc.defer_score
                self.jobs_retried += 1
            elif job_id in self.aborting_tasks and isinstance(exc, asyncio.CancelledError):
                result = exc
                finish = True
                self.aborting_tasks.remove(job_id)
                self.jobs_failed += 1
            elif self.retry_jobs and isinstance(exc, (asyncio.CancelledError, RetryJob)):
                self.jobs_retried += 1
            else:
                log.exception("worker.job_failed", job_id=job_id, error=type(exc).__name__)
                result = exc
                finish = True
                self.jobs_failed += 1
        else:
            success = True
            finish = True
            self.jobs_complete += 1
        finished_ms = timestamp_ms()

        keep_result_forever = (
            self.keep_result_forever
            if function.keep_result_forever is None
            else function.keep_result_forever
        )
        result_timeout_s = (
            self.keep_result_s if function.keep_result_s is None else function.keep_result_s
        )
        result_data = None
        if result is not _NO_RESULT and (keep_result_forever or result_timeout_s > 0):
            result_data = self._result_data(
                job_id,
                function_name,
                args,
                kwargs,
                job_try,
                enqueue_time_ms,
                success,
                result,
                start_ms,
                finished_ms,
            )
        if self.on_job_end:
            await self.on_job_end(ctx)
        await asyncio.shield(
            self.finish_job(
                job_id,
                finish,
                result_data,
                result_timeout_s,
                keep_result_forever,
                incr_score,
                keep_in_progress,
            )
        )

    def _result_data(
        self,
        job_id: str,
        function_name: str,
        args: tuple[Any, ...],
        kwargs: dict[Any, Any],
        job_try: int,
        enqueue_time_ms: int,
        success: bool,
        result: Any,
        start_ms: int,
        finished_ms: int | None = None,
    ) -> bytes | None:
        return serialize_result(
            function_name,
            args,
            kwargs,
            job_try,
            enqueue_time_ms,
            success,
            result,
            start_ms,
            timestamp_ms() if finished_ms is None else finished_ms,
            f"{job_id}:{function_name}",
            self.queue_name,
            job_id=job_id,
            serializer=self.job_serializer,
        )

    # --- arq hooks adjusted

    def _claim_of(self, job_id: str) -> Claim | None:
        """The claim of the run calling (its context variable), else the job id's latest."""
        claim = _RUN.get()
        if claim is not None:
            return claim
        return self.claims.get(job_id)

    def _member(self, job_id: str) -> str:
        claim = self._claim_of(job_id)
        if claim is not None:
            return member(claim.job_class, job_id)
        return member(HOOK if job_id.endswith(":webhook") else "b", job_id)

    def _lease(self, job_id: str) -> tuple[Lease, Claim | None]:
        claim = self._claim_of(job_id)
        return Lease(self._member(job_id), claim.token if claim else ""), claim

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        lease, claim = self._lease(job_id)
        if claim is not None and (claim.settled or claim.lost):
            return  # the job's own script already settled it, or another claim holds it
        if not finish:
            # Cancelled here (shutdown) or asked to retry: due again now (or after the
            # retry's delay), not when the lease ends; its running slot is given back. (arq's
            # own step would only delete the in-progress key, which the hand-back does.)
            due = now_ms() + incr_score if incr_score else None
            if await self.scheduler.hand_back([lease], due):
                self._lost(job_id, claim, "hand_back")
            return
        # Settled first, under the claim's token: arq's step deletes the job's keys, which
        # must never happen to a job another claim holds.
        if await self.scheduler.settle([lease]):
            self._lost(job_id, claim, "settle")
            return
        await super().finish_job(
            job_id,
            finish,
            result_data,
            result_timeout_s,
            keep_result_forever,
            incr_score,
            keep_in_progress,
        )

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq gave up on the job before running it (expired, undecodable, out of tries)."""
        lease, claim = self._lease(job_id)
        if claim is not None and claim.lost:
            return
        if await self.scheduler.settle([lease]):
            self._lost(job_id, claim, "settle")
            return
        await super().finish_failed_job(job_id, result_data)

    def _lost(self, job_id: str, claim: Claim | None, step: str) -> None:
        if claim is not None:
            self._lease_lost(job_id, claim, step)
        else:
            log.warning("worker.lease_lost", job_id=job_id, step=step)

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.pool.delete(self._worker_key)
        try:
            await super().close()
        except (RedisError, OSError) as exc:
            log.warning("worker.close_without_redis", error=type(exc).__name__)


_WORKER = "taskwire_worker"  # where the seam finds the worker in arq's ctx
# The claim of the run in whose task (or a task it started) the code runs: set by _start.
_RUN: contextvars.ContextVar[Claim | None] = contextvars.ContextVar("taskwire_run", default=None)
_HEARD_FOR_S = 30.0  # how long a cancel for a job not running here is remembered
_NO_RESULT = object()  # a run that ended without a result (retried or cancelled)


# A job that failed on Redis runs again after this, doubling per try up to the cap.
STORAGE_RETRY_BASE_S = 0.5
STORAGE_RETRY_CAP_S = 15.0


def job_function(function: Callable[..., Awaitable[None]]) -> WorkerCoroutine:
    """Wrap a taskwire job `function(job: JobContext, *args)` as the arq job function
    `(ctx, *args)`. arq's ctx keys read here: "job_id" and "job_try" (its documented ones)
    and the worker this module put there."""

    async def arq_job(ctx: dict[str, Any], *args: Any) -> None:
        worker: QueueWorker = ctx[_WORKER]
        job_id: str = ctx["job_id"]
        claim = _RUN.get() or worker.claims.get(job_id)
        if claim is None:  # not started by _start: registered here, so cancels can find it
            claim = worker.claims[job_id] = Claim(worker._member(job_id)[0], None, False)
        context = JobContext(ctx["deps"], job_id, int(ctx["job_try"]), claim)
        worker.contexts[job_id] = context
        try:
            await function(context, *args)
        except (RedisError, OSError) as exc:
            # Storage trouble the job could not ride out: hand the job back, due again after
            # a pause. Raised on, arq would count the job finished and settle it once Redis
            # answers again, with no result recorded (the task would stay processing).
            defer_s = min(STORAGE_RETRY_BASE_S * 2 ** (context.job_try - 1), STORAGE_RETRY_CAP_S)
            log.warning(
                "worker.storage_retry",
                job_id=job_id,
                error=type(exc).__name__,
                retry_in_s=defer_s,
            )
            raise Retry(defer=defer_s) from exc

    arq_job.__name__ = arq_job.__qualname__ = function.__name__
    return cast(WorkerCoroutine, arq_job)


def json_serializer(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_deserializer(raw: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(raw)
    return result
