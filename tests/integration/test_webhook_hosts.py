"""The per-host limit on webhook attempts against a real redis-server: holds up to the limit,
a delivery past it goes back to the queue (delayed, its running slot and arq try given
back, its state untouched), recording an attempt frees the host's slot, and a crashed
worker's hold lapses."""

from __future__ import annotations

import time
import uuid

import redis.asyncio as aioredis

from core.deliveries import DeliveryState, DeliveryStore
from core.keys import Keys, TaskRef
from core.scheduler import HOOK, Fairness, Scheduler, member

KEYS = Keys("tw", "tw:queue")
OWNER = "aaaa"
HOST = "hooks.example"
TOKENS: dict[TaskRef, str] = {}  # each running delivery's claim token


async def running_deliveries(redis: aioredis.Redis, count: int) -> list[TaskRef]:
    """`count` delivery jobs of OWNER, claimed (leased and running), each on its first try."""
    refs = [TaskRef(OWNER, str(uuid.uuid4())) for _ in range(count)]
    sched = Scheduler(redis, KEYS, 30.0, Fairness())
    for ref in refs:
        job_id = KEYS.delivery_job_id(ref, 0)
        await redis.set(KEYS.job(job_id), "{}")
    await sched.enqueue([(HOOK, KEYS.delivery_job_id(ref, 0), None) for ref in refs])
    claimed, _ = await sched.claim(count)  # counts each run as a try, as it starts it
    assert len(claimed) == count
    assert all(job.job_try == 1 for job in claimed)
    by_id = {job.job_id: job.token for job in claimed}
    TOKENS.update({ref: by_id[KEYS.delivery_job_id(ref, 0)] for ref in refs})
    return refs


async def hold(store: DeliveryStore, ref: TaskRef) -> bool:
    return await store.hold_host(ref, 0, HOST, limit=2, hold_s=20, busy_s=1, token=TOKENS[ref])


async def test_past_the_limit_a_delivery_waits_in_the_queue_uncounted(
    redis_async: aioredis.Redis,
) -> None:
    store = DeliveryStore(redis_async, KEYS, retention_s=600, schedule_s=10)
    first, second, third = await running_deliveries(redis_async, 3)
    assert await hold(store, first) and await hold(store, second)
    assert await hold(store, first)  # a re-run of a job already holding keeps its slot
    before = time.time() * 1000
    assert not await hold(store, third)

    job_id = KEYS.delivery_job_id(third, 0)
    due = await redis_async.zscore(KEYS.queue_prefix + "delayed", member(HOOK, job_id))
    assert due is not None and before + 900 <= due <= before + 2000
    assert await redis_async.zscore(KEYS.queue_prefix + "leases", member(HOOK, job_id)) is None
    assert await redis_async.hget(KEYS.queue_prefix + "running", f"h:{OWNER}") == b"2"
    assert await redis_async.exists(KEYS.retry(job_id)) == 0  # the run was not a try
    assert await redis_async.zscore(KEYS.pending_deliveries, job_id) == due
    assert await redis_async.zcard(KEYS.webhook_host(HOST)) == 2


async def test_recording_an_attempt_frees_the_hosts_slot(redis_async: aioredis.Redis) -> None:
    store = DeliveryStore(redis_async, KEYS, retention_s=600, schedule_s=10)
    first, second, third = await running_deliveries(redis_async, 3)
    assert await hold(store, first) and await hold(store, second)
    delivered = DeliveryState(state="delivered", attempts=1)
    await store.record(first, 0, delivered, None, HOST, token=TOKENS[first])
    assert await hold(store, third)
    await store.release_host(second, 0, HOST)
    assert await redis_async.zrange(KEYS.webhook_host(HOST), 0, -1) == [
        KEYS.delivery_job_id(third, 0).encode()
    ]


async def test_a_crashed_workers_hold_lapses(redis_async: aioredis.Redis) -> None:
    store = DeliveryStore(redis_async, KEYS, retention_s=600, schedule_s=10)
    [ref] = await running_deliveries(redis_async, 1)
    lapsed = time.time() * 1000 - 1
    await redis_async.zadd(KEYS.webhook_host(HOST), {"gone:1:0:webhook": lapsed, "gone:2": lapsed})
    assert await hold(store, ref)
    assert await redis_async.zcard(KEYS.webhook_host(HOST)) == 1
    assert 0 < await redis_async.pttl(KEYS.webhook_host(HOST)) <= 20_000
