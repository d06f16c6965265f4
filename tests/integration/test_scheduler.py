"""The scheduler's scripts against a real redis-server: classes, fair turns, limits, leases."""

from __future__ import annotations

import asyncio
import collections
import time

import redis.asyncio as aioredis

from core.keys import Keys
from core.scheduler import BATCH, HOOK, INTERACTIVE, Fairness, Scheduler

KEYS = Keys("tw", "tw:queue")


def scheduler(redis: aioredis.Redis, lease_s: float = 30.0, **fairness: float) -> Scheduler:
    return Scheduler(redis, KEYS, lease_s, Fairness(**fairness))  # type: ignore[arg-type]


def jobs(owner: str, count: int, start: int = 0) -> list[str]:
    return [f"{owner}:task{i}:0" for i in range(start, start + count)]


async def flood(sched: Scheduler, job_class: str, owner: str, count: int, start: int = 0) -> None:
    for chunk in range(start, start + count, 1000):
        size = min(1000, start + count - chunk)
        await sched.enqueue([(job_class, job, None) for job in jobs(owner, size, chunk)])


async def claim_owners(sched: Scheduler, turns: int, per_claim: int = 1) -> list[str]:
    owners = []
    for _ in range(turns):
        claimed, _ = await sched.claim(per_claim)
        owners += [job.job_id.split(":", 1)[0] for job in claimed]
    return owners


async def test_two_flooding_keys_share_turns_evenly(redis_async: aioredis.Redis) -> None:
    sched = scheduler(redis_async)
    await flood(sched, BATCH, "aaaa", 3000)
    await flood(sched, BATCH, "bbbb", 1000)
    counts = collections.Counter(await claim_owners(sched, 100, per_claim=10))
    assert sum(counts.values()) == 1000
    assert abs(counts["aaaa"] - counts["bbbb"]) <= 100  # within 10% of the 1000 turns


async def test_a_single_task_is_not_queued_behind_a_big_backlog(
    redis_async: aioredis.Redis,
) -> None:
    sched = scheduler(redis_async)
    await flood(sched, BATCH, "aaaa", 10_000)
    await claim_owners(sched, 5)
    await sched.enqueue([(BATCH, "bbbb:lonely:0", None)])
    claimed, _ = await sched.claim(2)
    assert "bbbb:lonely:0" in [job.job_id for job in claimed]


async def test_interactive_work_overtakes_a_batch_backlog(redis_async: aioredis.Redis) -> None:
    sched = scheduler(redis_async)
    await flood(sched, BATCH, "aaaa", 10_000)
    await sched.enqueue([(INTERACTIVE, "bbbb:chat:0", None)])
    claimed, _ = await sched.claim(1)
    assert [job.job_id for job in claimed] == ["bbbb:chat:0"]
    assert claimed[0].job_class == INTERACTIVE


async def test_batch_keeps_its_share_under_an_interactive_flood(
    redis_async: aioredis.Redis,
) -> None:
    sched = scheduler(redis_async, batch_share=0.1)
    await flood(sched, INTERACTIVE, "aaaa", 2000)
    await flood(sched, BATCH, "cccc", 2000)
    await flood(sched, HOOK, "dddd", 2000)
    owners = await claim_owners(sched, 110)
    counts = collections.Counter(owners)
    batch_side = counts["cccc"] + counts["dddd"]
    assert 9 <= batch_side <= 11, counts
    assert counts["cccc"] >= 4 and counts["dddd"] >= 4  # the batch side alternates
    # and with no interactive work waiting, batch work takes every turn
    sched2 = scheduler(redis_async)
    await redis_async.delete(*[k async for k in redis_async.scan_iter("tw:q:ready:i:*")])
    await redis_async.delete("tw:q:tenants:i")
    assert set(await claim_owners(sched2, 20)) <= {"cccc", "dddd"}


async def test_weights_divide_turns(redis_async: aioredis.Redis) -> None:
    sched = scheduler(redis_async)
    await redis_async.hset(KEYS.tenant_prefix + "aaaa", "weight", 3)  # type: ignore[misc]
    await flood(sched, BATCH, "aaaa", 1000)
    await flood(sched, BATCH, "bbbb", 1000)
    counts = collections.Counter(await claim_owners(sched, 40, per_claim=10))
    assert 280 <= counts["aaaa"] <= 320, counts


async def test_running_limit_parks_a_key_until_one_of_its_jobs_settles(
    redis_async: aioredis.Redis,
) -> None:
    sched = scheduler(redis_async)
    await redis_async.hset(KEYS.tenant_prefix + "aaaa", "max_r", 2)  # type: ignore[misc]
    await flood(sched, BATCH, "aaaa", 10)
    await flood(sched, BATCH, "bbbb", 10)
    claimed, _ = await sched.claim(100)
    by_owner = collections.Counter(job.job_id.split(":")[0] for job in claimed)
    assert by_owner == {"aaaa": 2, "bbbb": 10}
    assert (await sched.claim(100))[0] == []
    await sched.settle([claimed[0].lease])
    again, _ = await sched.claim(100)
    assert [job.job_id for job in again] == ["aaaa:task2:0"]
    assert await redis_async.hget(KEYS.queue_prefix + "running", "r:aaaa") == b"2"  # type: ignore[misc]


async def test_a_lapsed_lease_requeues_the_job_at_the_front_and_frees_its_slot(
    redis_async: aioredis.Redis,
) -> None:
    sched = scheduler(redis_async, lease_s=0.1)
    await redis_async.hset(KEYS.tenant_prefix + "aaaa", "max_r", 1)  # type: ignore[misc]
    await flood(sched, BATCH, "aaaa", 3)
    first, next_due = await sched.claim(10)
    assert [job.job_id for job in first] == ["aaaa:task0:0"]
    assert next_due is not None
    # the worker "dies": no renewals; once the lease lapses the job runs again, first
    deadline = asyncio.get_running_loop().time() + 5
    again: list[str] = []
    while not again and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        again = [job.job_id for job in (await sched.claim(10))[0]]
    assert again == ["aaaa:task0:0"]
    assert await redis_async.hget(KEYS.queue_prefix + "running", "r:aaaa") == b"1"  # type: ignore[misc]


async def test_renewed_leases_keep_jobs_invisible(redis_async: aioredis.Redis) -> None:
    sched = scheduler(redis_async, lease_s=0.3)
    await flood(sched, BATCH, "aaaa", 1)
    claimed, _ = await sched.claim(1)
    for _ in range(6):
        await asyncio.sleep(0.1)
        await sched.renew([claimed[0].lease])
        assert (await sched.claim(1))[0] == []


async def test_delayed_jobs_are_not_backlog_until_due(redis_async: aioredis.Redis) -> None:
    sched = scheduler(redis_async)
    from core.scheduler import now_ms

    await sched.enqueue([(HOOK, "aaaa:t:0:webhook", now_ms() + 300)])
    assert (await sched.depth()).get(HOOK, 0) == 0
    claimed, next_due = await sched.claim(1)
    assert claimed == [] and next_due is not None
    await asyncio.sleep(max(next_due - time.time(), 0) + 0.01)
    claimed, _ = await sched.claim(1)
    assert [job.job_id for job in claimed] == ["aaaa:t:0:webhook"]


async def test_hand_back_makes_a_job_due_again_and_frees_its_slot(
    redis_async: aioredis.Redis,
) -> None:
    sched = scheduler(redis_async)
    await flood(sched, INTERACTIVE, "aaaa", 1)
    claimed, _ = await sched.claim(1)
    await sched.hand_back([claimed[0].lease])
    assert await redis_async.hget(KEYS.queue_prefix + "running", "r:aaaa") is None  # type: ignore[misc]
    again, _ = await sched.claim(1)
    assert [job.job_id for job in again] == ["aaaa:task0:0"]


async def test_idle_tenants_leave_the_index(redis_async: aioredis.Redis) -> None:
    sched = scheduler(redis_async)
    for owner in ("aaaa", "bbbb", "cccc"):
        await flood(sched, BATCH, owner, 1)
    await sched.claim(10)
    assert await redis_async.zcard(KEYS.queue_prefix + "tenants:b") == 0
    assert (await sched.depth()).get(BATCH) == 0
    # a tenant that comes back joins at the current virtual time, not ahead of others
    await flood(sched, BATCH, "aaaa", 5, start=100)
    await flood(sched, BATCH, "bbbb", 5, start=100)
    owners = await claim_owners(sched, 4)
    assert collections.Counter(owners) == {"aaaa": 2, "bbbb": 2}


async def test_a_key_that_drains_its_line_each_turn_does_not_jump_the_queue(
    redis_async: aioredis.Redis,
) -> None:
    # one key keeps exactly one job waiting (refilled whenever its line is empty, between
    # claims); it must still alternate with a backlogged key, not take every turn
    sched = scheduler(redis_async)
    await flood(sched, BATCH, "bbbb", 50)
    served = []
    for n in range(20):
        if await redis_async.zcard(KEYS.queue_prefix + "ready:b:zzzz") == 0:
            await sched.enqueue([(BATCH, f"zzzz:one{n}:0", None)])
        claimed, _ = await sched.claim(1)
        served.append(claimed[0].job_id.split(":")[0])
    assert collections.Counter(served)["bbbb"] >= 9, served


async def test_a_low_weight_key_cannot_dodge_its_weight_by_draining(
    redis_async: aioredis.Redis,
) -> None:
    sched = scheduler(redis_async)
    await redis_async.hset(KEYS.tenant_prefix + "aaaa", "weight", 0.1)  # type: ignore[misc]
    await flood(sched, BATCH, "bbbb", 100)
    served = []
    for n in range(22):
        if await redis_async.zcard(KEYS.queue_prefix + "ready:b:aaaa") == 0:
            await sched.enqueue([(BATCH, f"aaaa:one{n}:0", None)])
        claimed, _ = await sched.claim(1)
        served.append(claimed[0].job_id.split(":")[0])
    counts = collections.Counter(served)
    assert counts["aaaa"] <= 3, served  # about 1 in 11 turns at weight 0.1 against 1
