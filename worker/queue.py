"""arq's Worker with the defaults this product cannot live with replaced.

arq (0.26-0.28) polls its queue every 0.5 s, claims jobs with four round trips each, holds a
job's in-progress key for the whole job timeout, and exits on the first Redis error. Here:

* **Wake-ups, not polling.** Enqueuers publish on `<queue>:wake`; the worker waits on that
  (with a slow fallback poll), so a job starts within a millisecond or two of its enqueue.
* **Leases.** Claiming a job sets its in-progress key for `lease_s` and moves the job's queue
  score to `now + lease` (one Lua call for a whole batch). The worker renews both while the
  job runs. A SIGKILLed worker's jobs become visible again when the lease runs out, whatever
  the job timeout; and a queue read never has to skip over jobs that are already running.
* **Redis outages are survived.** Errors in the loop are logged and retried with backoff;
  the wake-up subscription reconnects by itself.
* **Graceful stop.** SIGTERM stops claiming, lets running jobs finish within the grace
  period, and hands back (makes immediately visible) whatever had to be cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import structlog
from arq.worker import Worker
from redis.exceptions import RedisError

from core.store import ARQ_IN_PROGRESS_PREFIX

log = structlog.get_logger("taskwire.worker")

# Claim up to ARGV[3] ready jobs: lock each (in-progress key, NX) and push its score to the
# lease end, so it is invisible to other readers until the lease lapses. Returns id, score pairs.
_CLAIM = """
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local ready = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local claimed = {}
for i = 1, #ready, 2 do
  local id = ready[i]
  if redis.call('SET', ARGV[4] .. id, '1', 'NX', 'PX', lease) then
    redis.call('ZADD', KEYS[1], now + lease, id)
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = ready[i + 1]
  end
end
return claimed
"""

# Extend the leases of jobs still running here (ARGV[4..]); a job already finished is skipped.
_RENEW = """
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
for i = 4, #ARGV do
  if redis.call('PEXPIRE', ARGV[3] .. ARGV[i], lease) == 1 then
    redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i])
  end
end
return 1
"""


class QueueWorker(Worker):
    """arq Worker woken by pub/sub, with leased claims and Redis-outage survival."""

    def __init__(
        self,
        *,
        lease_s: float,
        wake_channel: str,
        worker_key: str,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        # arq sets in-progress keys for job_timeout + 10 s; ours are leases, renewed below.
        self.in_progress_timeout_s = lease_s
        self._lease_ms = int(lease_s * 1000)
        self._wake_channel = wake_channel
        self._worker_key = worker_key
        self._wake: asyncio.Event | None = None
        self._saturated = False
        self._claim: Any = None
        self._renew: Any = None
        self._background: list[asyncio.Task[None]] = []

    # --- main loop

    async def main(self) -> None:
        self._wake = asyncio.Event()
        await self._wait_for_redis()
        self.ctx["redis"] = self.pool
        self._claim = self.pool.register_script(_CLAIM)
        self._renew = self.pool.register_script(_RENEW)
        if self.on_startup:
            await self.on_startup(self.ctx)
        await self._register()
        self._background = [
            asyncio.create_task(self._listen_for_wakeups(), name="worker-wakeups"),
            asyncio.create_task(self._renew_leases(), name="worker-leases"),
        ]
        log.info(
            "worker.started",
            queue=self.queue_name,
            max_jobs=self.max_jobs,
            lease_s=self.in_progress_timeout_s,
        )
        backoff = 0.05
        try:
            while True:
                self._wake.clear()
                try:
                    await self._poll_iteration()
                except (RedisError, OSError) as exc:
                    log.warning(
                        "worker.redis_unavailable",
                        error=type(exc).__name__,
                        retry_in_s=round(backoff, 2),
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.05
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_delay_s)
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
                return
            except (RedisError, OSError) as exc:
                log.warning("worker.waiting_for_redis", error=type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _poll_iteration(self) -> None:
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            free = self.max_jobs - self.job_counter
            now_ms = int(time.time() * 1000)
            claimed = await self._claim(
                keys=[self.queue_name],
                args=[now_ms, self._lease_ms, free, ARQ_IN_PROGRESS_PREFIX],
            )
            for i in range(0, len(claimed), 2):
                self._start(claimed[i].decode(), int(float(claimed[i + 1])))
            self._saturated = len(claimed) // 2 >= free
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

    def _start(self, job_id: str, score: int) -> None:
        self.job_counter += 1
        task = self.loop.create_task(self.run_job(job_id, score))
        task.add_done_callback(self._job_done)
        self.tasks[job_id] = task

    def _job_done(self, _task: asyncio.Task[Any]) -> None:
        self.job_counter -= 1
        if self._saturated and self._wake is not None:
            self._wake.set()

    # --- wake-ups and leases

    async def _listen_for_wakeups(self) -> None:
        assert self._wake is not None
        backoff = 0.05
        while True:
            try:
                async with self.pool.pubsub() as pubsub:
                    await pubsub.subscribe(self._wake_channel)
                    self._wake.set()  # after a (re)connect, look at the queue at once
                    backoff = 0.05
                    while True:
                        message = await pubsub.get_message(timeout=None)
                        if message is not None and message["type"] == "message":
                            self._wake.set()
            except (RedisError, OSError) as exc:
                log.warning("worker.wakeups_disconnected", error=type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _renew_leases(self) -> None:
        interval = self.in_progress_timeout_s / 3
        while True:
            await asyncio.sleep(interval)
            running = [job_id for job_id, task in self.tasks.items() if not task.done()]
            try:
                await self._register(len(running))
                if running:
                    await self._renew(
                        keys=[self.queue_name],
                        args=[
                            int(time.time() * 1000),
                            self._lease_ms,
                            ARQ_IN_PROGRESS_PREFIX,
                            *running,
                        ],
                    )
            except (RedisError, OSError) as exc:
                log.warning(
                    "worker.lease_renewal_failed", error=type(exc).__name__, jobs=len(running)
                )

    async def _register(self, running: int = 0) -> None:
        """Announce this worker and its load; the key lapses soon after the worker dies."""
        await self.pool.set(
            self._worker_key, str(running), ex=max(int(self.in_progress_timeout_s * 2), 3)
        )

    # --- arq hooks adjusted

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
        await super().finish_job(
            job_id,
            finish,
            result_data,
            result_timeout_s,
            keep_result_forever,
            incr_score,
            keep_in_progress,
        )
        if not finish and incr_score is None:
            # Cancelled here (shutdown): hand the job back now rather than when the lease ends.
            await self.pool.zadd(self.queue_name, {job_id: int(time.time() * 1000)}, xx=True)

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.pool.delete(self._worker_key)
        try:
            await super().close()
        except (RedisError, OSError) as exc:
            log.warning("worker.close_without_redis", error=type(exc).__name__)


def json_serializer(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_deserializer(raw: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(raw)
    return result
