"""Lease ownership against a real redis-server: every script that acts on a leased job checks
the claim's token, so a worker whose lease lapsed (and whose job another worker claimed)
cannot settle, renew, hand back, record or reschedule it; what it may still do (record its
result while the re-queued copy waits unclaimed) unqueues the copy."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.contract import Delta, Final, SuccessItem
from core.deliveries import DeliveryState, DeliveryStore
from core.keys import ARQ_IN_PROGRESS_PREFIX, Keys, TaskRef
from core.scheduler import BATCH, HOOK, ClaimedJob, Fairness, LeaseLost, Scheduler, member
from core.store import NewTask, TaskRecord, TaskStore

KEYS = Keys("tw", "tw:queue")
QP = KEYS.queue_prefix
OWNER = "aaaa"
LEASE_S = 0.3


@pytest.fixture
def store(redis_async: aioredis.Redis) -> TaskStore:
    return TaskStore(redis_async, KEYS, retention_s=600)


def scheduler(redis: aioredis.Redis, lease_s: float = 30.0) -> Scheduler:
    return Scheduler(redis, KEYS, lease_s, Fairness())


async def submitted(store: TaskStore, webhook: bool = False) -> TaskRecord:
    task_uuid = str(uuid.uuid4())
    request: dict[str, Any] = {"taskUUID": task_uuid, "deliveryMethod": "async"}
    if webhook:
        request["webhookURL"] = "https://hooks.example.com/in"
    ref = TaskRef(OWNER, task_uuid)
    [outcome] = await store.submit([NewTask(ref, "fp", request, [7])])
    assert outcome.created
    record = await store.get(ref)
    assert record is not None
    return record


async def lapsed_and_reclaimed(redis: aioredis.Redis) -> tuple[ClaimedJob, ClaimedJob]:
    """The one queued job claimed by a worker whose lease then lapses (a partition, a stalled
    loop), and claimed again by another worker: (the stale claim, the current one)."""
    [stale], _ = await scheduler(redis, LEASE_S).claim(1)
    await asyncio.sleep(LEASE_S + 0.15)
    [current], _ = await scheduler(redis).claim(1)  # sweeps the lapsed lease, then claims
    assert current.job_id == stale.job_id and current.token != stale.token
    return stale, current


def success(ref: TaskRef, text: str) -> SuccessItem:
    return SuccessItem(ref.uuid, 0, text, "stop", 1)


async def finals(store: TaskStore, ref: TaskRef) -> list[dict[str, Any]]:
    stored = [json.loads(f[b"d"]) for _id, f in await store.redis.xrange(KEYS.events(ref))]
    return [data for data in stored if data.get("t") == "f"]


async def queue_state(redis: aioredis.Redis, job: ClaimedJob) -> dict[str, Any]:
    """What the queue says of a job: its lease, in-progress token, line and counters."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zscore(QP + "leases", job.member)
        pipe.get(ARQ_IN_PROGRESS_PREFIX + job.job_id)
        pipe.zscore(f"{QP}ready:{job.job_class}:{OWNER}", job.job_id)
        pipe.zscore(QP + "delayed", job.member)
        pipe.hget(QP + "running", f"{'h' if job.job_class == HOOK else 'r'}:{OWNER}")
        pipe.hget(QP + "depth", job.job_class)
        lease, token, ready, delayed, running, depth = await pipe.execute()
    return {
        "leased": lease is not None,
        "token": token.decode() if token else None,
        "ready": ready is not None,
        "delayed": delayed is not None,
        "running": int(running or 0),
        "depth": int(depth or 0),
    }


async def test_a_stale_holders_result_is_refused_and_leaves_no_trace(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    # The defect this fixes: the finish script checked the job id, not the claim, so a
    # worker whose lease lapsed recorded its result, announced it, enqueued its webhook and
    # settled the lease of the worker that runs the job now.
    record = await submitted(store, webhook=True)
    ref = record.ref
    stale, current = await lapsed_and_reclaimed(redis_async)
    before = await queue_state(redis_async, current)
    assert before == {
        "leased": True,
        "token": current.token,
        "ready": False,
        "delayed": False,
        "running": 1,
        "depth": 0,
    }
    outcome = await store.finish_result(
        ref,
        Final(0, 1, success(ref, "stale")),
        then=_delivery(redis_async).first_job(ref, 0),
        job_class=BATCH,
        token=stale.token,
    )
    assert outcome.lease_lost and not outcome.written
    assert await queue_state(redis_async, current) == before  # its lease untouched
    after = await store.get(ref)
    assert after is not None and after.results == {} and after.deliveries == {}
    assert await redis_async.hget(KEYS.task(ref), "done") == b"0"
    assert await finals(store, ref) == []
    assert await redis_async.exists(KEYS.job(KEYS.delivery_job_id(ref, 0))) == 0
    assert await redis_async.hget(QP + "depth", HOOK) is None  # no delivery enqueued
    assert await redis_async.exists(KEYS.job(current.job_id)) == 1  # arq's keys kept

    # the worker that holds the job records it: once, with its delivery
    mine = await store.finish_result(
        ref,
        Final(0, 2, success(ref, "current")),
        then=_delivery(redis_async).first_job(ref, 0),
        job_class=BATCH,
        token=current.token,
    )
    assert mine.written and not mine.lease_lost
    assert [event["r"]["text"] for event in await finals(store, ref)] == ["current"]
    assert await redis_async.hget(QP + "depth", HOOK) == b"1"
    assert await queue_state(redis_async, current) == {
        "leased": False,
        "token": None,
        "ready": False,
        "delayed": False,
        "running": 0,
        "depth": 0,
    }


async def test_after_the_other_run_recorded_the_stale_one_is_refused_and_silent(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    record = await submitted(store, webhook=True)
    ref = record.ref
    stale, current = await lapsed_and_reclaimed(redis_async)
    then = _delivery(redis_async).first_job(ref, 0)
    done = await store.finish_result(
        ref, Final(0, 2, success(ref, "current")), then=then, job_class=BATCH, token=current.token
    )
    assert done.written
    async with redis_async.pubsub() as pubsub:
        await pubsub.subscribe(KEYS.events(ref))
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        late = await store.finish_result(
            ref, Final(0, 1, success(ref, "stale")), then=then, job_class=BATCH, token=stale.token
        )
        assert late.lease_lost and not late.written
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
    assert [event["r"]["text"] for event in await finals(store, ref)] == ["current"]
    assert await redis_async.hget(KEYS.task(ref), "done") == b"1"
    assert await redis_async.hget(QP + "depth", HOOK) == b"1"  # one delivery, not two


async def test_the_record_script_refuses_a_second_final_result_and_publishes_nothing(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    # Two runs that may both act (no claim holds the job: e.g. a result recorded by one run
    # while no lease was held) still record the slot once: HSETNX first, nothing after it.
    record = await submitted(store, webhook=True)
    ref = record.ref
    then = _delivery(redis_async).first_job(ref, 0)
    first = await store.finish_result(ref, Final(0, 1, success(ref, "one")), then=then)
    assert first.written
    job_key = KEYS.job(then.job_id)
    payload = await redis_async.get(job_key)
    async with redis_async.pubsub() as pubsub:
        await pubsub.subscribe(KEYS.events(ref), KEYS.wake)
        for _ in range(2):
            await pubsub.get_message(timeout=1)
        # a copy of the job queued again (as if its lease lapsed): the second run may act
        await scheduler(redis_async).enqueue([(BATCH, KEYS.job_id(ref, 0), None)])
        await pubsub.get_message(timeout=1)  # that enqueue's own wake-up
        second = await store.finish_result(
            ref, Final(0, 2, success(ref, "two")), then=then, job_class=BATCH
        )
        assert not second.written and not second.lease_lost
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
    assert [event["r"]["text"] for event in await finals(store, ref)] == ["one"]
    assert len(await redis_async.xrange(KEYS.events(ref))) == 1
    assert await redis_async.hmget(KEYS.task(ref), ["done", "errors"]) == [b"1", b"0"]
    assert await redis_async.get(job_key) == payload  # the delivery job not written again
    assert await redis_async.hget(QP + "depth", HOOK) == b"1"
    # and the copy was taken out of its line: it does not run again
    assert await redis_async.hget(QP + "depth", BATCH) == b"0"


async def test_a_result_recorded_while_its_copy_waits_unqueues_the_copy(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    record = await submitted(store)
    ref = record.ref
    [slow], _ = await scheduler(redis_async, LEASE_S).claim(1)
    await asyncio.sleep(LEASE_S + 0.15)
    # another worker's claim (of nothing else) sweeps the lapsed lease: the job is re-queued
    sweeper = scheduler(redis_async)
    assert (await sweeper.claim(1, classes="h"))[0] == []
    assert await queue_state(redis_async, slow) == {
        "leased": False,
        "token": None,
        "ready": True,
        "delayed": False,
        "running": 0,
        "depth": 1,
    }
    # the slow worker was alive after all: its result is recorded, the copy is gone
    done = await store.finish_result(
        ref, Final(0, 1, success(ref, "slow")), job_class=BATCH, token=slow.token
    )
    assert done.written
    assert await queue_state(redis_async, slow) == {
        "leased": False,
        "token": None,
        "ready": False,
        "delayed": False,
        "running": 0,
        "depth": 0,
    }
    assert await redis_async.hget(QP + "queued", OWNER) == b"0"
    assert (await sweeper.claim(10))[0] == []


async def test_a_stale_holder_cannot_renew_hand_back_or_settle(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    await submitted(store)
    sched = scheduler(redis_async)
    stale, current = await lapsed_and_reclaimed(redis_async)
    before = await queue_state(redis_async, current)
    ttl_before = await redis_async.pttl(ARQ_IN_PROGRESS_PREFIX + current.job_id)

    assert await sched.renew([stale.lease, current.lease]) == {stale.token}
    assert await sched.hand_back([stale.lease]) == {stale.token}
    assert await sched.hand_back([stale.lease], int(time.time() * 1000) + 60_000) == {stale.token}
    assert await sched.settle([stale.lease]) == {stale.token}
    assert await queue_state(redis_async, current) == before  # not re-queued, not released
    assert await redis_async.pttl(ARQ_IN_PROGRESS_PREFIX + current.job_id) >= ttl_before - 100
    assert (await sched.claim(10))[0] == []  # nothing to claim: the job is not doubled

    # the current holder's own calls work
    assert await sched.hand_back([current.lease]) == set()
    [again], _ = await sched.claim(1)
    assert again.job_id == current.job_id and again.token not in {stale.token, current.token}
    assert await sched.settle([current.lease]) == {current.token}  # handed back: no longer its
    assert await sched.settle([again.lease]) == set()
    assert await queue_state(redis_async, again) == {
        "leased": False,
        "token": None,
        "ready": False,
        "delayed": False,
        "running": 0,
        "depth": 0,
    }


async def test_renewing_a_lapsed_lease_nobody_swept_takes_it_again(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    await submitted(store)
    slow_sched = scheduler(redis_async, LEASE_S)
    [job], _ = await slow_sched.claim(1)
    await asyncio.sleep(LEASE_S + 0.15)  # a stalled loop: the lease lapsed, no claim ran
    assert await slow_sched.renew([job.lease]) == set()
    state = await queue_state(redis_async, job)
    assert state["leased"] and state["token"] == job.token and state["running"] == 1
    assert (await scheduler(redis_async).claim(1))[0] == []  # still held: not re-queued


async def test_renewing_takes_back_a_copy_swept_into_the_line_nobody_claimed(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    await submitted(store)
    slow_sched = scheduler(redis_async, LEASE_S)
    [job], _ = await slow_sched.claim(1)
    await asyncio.sleep(LEASE_S + 0.15)
    sweeper = scheduler(redis_async)
    assert (await sweeper.claim(1, classes="h"))[0] == []  # the lapsed lease is swept
    assert (await queue_state(redis_async, job))["ready"]
    assert await slow_sched.renew([job.lease]) == set()  # the run was alive: it is its job
    assert await queue_state(redis_async, job) == {
        "leased": True,
        "token": job.token,
        "ready": False,
        "delayed": False,
        "running": 1,
        "depth": 0,
    }
    assert await redis_async.hget(QP + "queued", OWNER) == b"0"
    assert (await sweeper.claim(1))[0] == []


async def test_a_stale_delivery_attempt_is_neither_held_nor_recorded(
    redis_async: aioredis.Redis,
) -> None:
    deliveries = _delivery(redis_async)
    ref = TaskRef(OWNER, str(uuid.uuid4()))
    job_id = KEYS.delivery_job_id(ref, 0)
    pending = DeliveryState(next_at=time.time())
    await redis_async.hset(KEYS.task(ref), "w:0", pending.to_json())  # type: ignore[misc]
    await redis_async.set(KEYS.job(job_id), "{}")
    await scheduler(redis_async).enqueue([(HOOK, job_id, None)])
    stale, current = await lapsed_and_reclaimed(redis_async)
    before = await queue_state(redis_async, current)

    with pytest.raises(LeaseLost):
        await deliveries.hold_host(ref, 0, "hooks.example", 5, 20, 1, token=stale.token)
    failed = DeliveryState(attempts=1, cycle=1, last_error="boom", next_at=time.time() + 5)
    with pytest.raises(LeaseLost):  # a retry scheduled by the stale run
        await deliveries.record(ref, 0, failed, 5.0, "hooks.example", token=stale.token)
    delivered = DeliveryState(state="delivered", attempts=1)
    with pytest.raises(LeaseLost):
        await deliveries.record(ref, 0, delivered, None, "hooks.example", token=stale.token)
    assert await queue_state(redis_async, current) == before
    assert await redis_async.hget(KEYS.task(ref), "w:0") == pending.to_json().encode()  # type: ignore[misc]
    assert await redis_async.zcard(KEYS.webhook_host("hooks.example")) == 0
    assert await redis_async.exists(KEYS.job(job_id)) == 1

    # the holder's attempt: held, then rescheduled once (a single copy, delayed)
    assert await deliveries.hold_host(ref, 0, "hooks.example", 5, 20, 1, token=current.token)
    await deliveries.record(ref, 0, failed, 5.0, "hooks.example", token=current.token)
    state = await queue_state(redis_async, current)
    assert state == {
        "leased": False,
        "token": None,
        "ready": False,
        "delayed": True,
        "running": 0,
        "depth": 0,
    }
    # and the stale run, arriving later still, cannot reschedule it again
    with pytest.raises(LeaseLost):
        await deliveries.record(ref, 0, delivered, None, "hooks.example", token="other")
    assert member(HOOK, job_id) in {
        m.decode() for m in await redis_async.zrange(QP + "delayed", 0, -1)
    }


def _delivery(redis: aioredis.Redis) -> DeliveryStore:
    return DeliveryStore(redis, KEYS, retention_s=600, schedule_s=10)


async def test_a_stale_holders_deltas_are_not_appended(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    # A worker cut off mid-stream comes back and flushes the deltas it buffered: they would
    # land in the stream under its old attempt, beside the new run's, and a reader resuming
    # a later attempt would concatenate both runs' text.
    record = await submitted(store)
    ref = record.ref
    stale, current = await lapsed_and_reclaimed(redis_async)
    refused = await store.append_events(ref, [Delta(0, 1, 1, text="stale")], 0, stale.token)
    assert refused is None
    appended = await store.append_events(ref, [Delta(0, 2, 1, text="current")], 0, current.token)
    assert appended is not None and len(appended) == 1
    stored = [fields[b"d"].decode() for _id, fields in await redis_async.xrange(KEYS.events(ref))]
    assert len(stored) == 1 and "current" in stored[0] and "stale" not in stored[0]
    # tools without a claim (token '') append as before
    assert await store.append_events(ref, [Delta(0, 2, 2, text="tool")]) is not None


async def usage_total(redis: aioredis.Redis) -> int:
    keys = [key async for key in redis.scan_iter(match=KEYS.usage_prefix + OWNER + ":*")]
    return sum([int(await redis.get(key) or 0) for key in keys])


async def test_the_finish_script_counts_a_recorded_results_tokens_once_and_a_stale_runs_never(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    # tokens per minute are added in the script that records the result (no round trip of
    # their own): a result recorded counts once; a second final result, or one refused
    # for a lost lease, counts nothing
    record = await submitted(store)
    ref = record.ref
    stale, current = await lapsed_and_reclaimed(redis_async)
    done = await store.finish_result(
        ref,
        Final(0, 2, success(ref, "current")),
        job_class=BATCH,
        token=current.token,
        usage_tokens=30,
    )
    assert done.written and await usage_total(redis_async) == 30
    late = await store.finish_result(
        ref,
        Final(0, 1, success(ref, "stale")),
        job_class=BATCH,
        token=stale.token,
        usage_tokens=500,
    )
    assert late.lease_lost and await usage_total(redis_async) == 30
    again = await store.finish_result(ref, Final(0, 3, success(ref, "again")), usage_tokens=500)
    assert not again.written and await usage_total(redis_async) == 30


async def test_the_claim_reads_the_arq_job_and_counts_its_try(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    # what arq's run_job would read and count in a MULTI of its own: the claim returns it
    record = await submitted(store)
    job_id = KEYS.job_id(record.ref, 0)
    [first], _ = await scheduler(redis_async, LEASE_S).claim(1)
    assert first.job_id == job_id and first.job_try == 1
    assert first.payload == await redis_async.get(KEYS.job(job_id))
    assert json.loads(first.payload or b"")["f"] == "run_result"
    await asyncio.sleep(LEASE_S + 0.15)
    [second], _ = await scheduler(redis_async).claim(1)  # the lapsed lease's job, again
    assert second.job_try == 2
    assert int(await redis_async.get(KEYS.retry(job_id)) or 0) == 2
    assert 0 < await redis_async.ttl(KEYS.retry(job_id)) <= 88400
