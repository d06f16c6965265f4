"""The cancel script against a real redis-server: queued results are recorded as cancelled
in one step (counted, announced, their webhook enqueued, their queue entry and arq keys
gone), running ones are marked and announced on the cancel channel, final ones are kept."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.cancel import Canceller, read_cancel_mark
from core.contract import LUA_FINAL_EVENT, ErrorItem, Final, SuccessItem, decode_event
from core.deliveries import DeliveryStore
from core.errors import TASK_CANCELLED
from core.keys import ARQ_JOB_PREFIX, ARQ_RETRY_PREFIX, Keys, TaskRef
from core.scheduler import HOOK, Fairness, Scheduler
from core.store import NewTask, TaskRecord, TaskStore

KEYS = Keys("tw", "tw:queue")
OWNER = "aaaa"


@pytest.fixture
def store(redis_async: aioredis.Redis) -> TaskStore:
    return TaskStore(redis_async, KEYS, retention_s=600)


async def submitted(
    store: TaskStore, n: int = 2, delivery: str = "async", webhook: bool = False
) -> TaskRecord:
    task_uuid = str(uuid.uuid4())
    request: dict[str, Any] = {"taskUUID": task_uuid, "deliveryMethod": delivery}
    if webhook:
        request["webhookURL"] = "https://hooks.example.com/in"
    ref = TaskRef(OWNER, task_uuid)
    [outcome] = await store.submit([NewTask(ref, "fp", request, list(range(n)))])
    assert outcome.created
    record = await store.get(ref)
    assert record is not None
    return record


async def cancel(store: TaskStore, record: TaskRecord, **kwargs: Any) -> dict[int, str]:
    return dict(await Canceller(store).cancel(record, TASK_CANCELLED, "stopped", **kwargs))


async def finals(store: TaskStore, ref: TaskRef) -> list[dict[str, Any]]:
    """The final events as stored (the wire format, not the decoded contract)."""
    stored = [
        json.loads(fields[b"d"]) for _id, fields in await store.redis.xrange(KEYS.events(ref))
    ]
    return [data for data in stored if data.get("t") == "f"]


def scheduler(redis: aioredis.Redis) -> Scheduler:
    return Scheduler(redis, KEYS, 30.0, Fairness())


async def test_queued_results_are_recorded_as_cancelled_at_once(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    record = await submitted(store, n=2)
    assert await cancel(store, record) == {0: "cancelled", 1: "cancelled"}
    after = await store.get(record.ref)
    assert after is not None
    assert [after.results[i] for i in (0, 1)] == [
        ErrorItem(record.request["taskUUID"], i, TASK_CANCELLED, "stopped") for i in (0, 1)
    ]
    raw = await redis_async.hmget(KEYS.task(record.ref), ["done", "errors", "cancel"])
    assert raw == [b"2", b"2", None]  # counted like finished results; no mark needed
    events = await finals(store, record.ref)
    assert [(e["i"], e["a"], e["r"]["status"]) for e in events] == [
        (0, 1, "error"),
        (1, 1, "error"),
    ]
    # out of the queue, arq keys gone: nothing is left to claim, nothing counts as queued
    assert await scheduler(redis_async).depth() == {"b": 0}
    assert await redis_async.hget(KEYS.queue_prefix + "queued", OWNER) == b"0"
    assert not await redis_async.exists(*(KEYS.job(KEYS.job_id(record.ref, i)) for i in (0, 1)))
    claimed, _ = await scheduler(redis_async).claim(10)
    assert claimed == []


async def test_a_running_result_is_marked_and_announced(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    record = await submitted(store, n=1, delivery="sync")
    claimed, _ = await scheduler(redis_async).claim(1)
    assert [job.job_id for job in claimed] == [KEYS.job_id(record.ref, 0)]
    async with redis_async.pubsub() as pubsub:
        await pubsub.subscribe(KEYS.cancels)
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        assert await cancel(store, record) == {0: "running"}
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert message is not None and message["data"].decode() == KEYS.job_id(record.ref, 0)
    assert await read_cancel_mark(store, record.ref) == TASK_CANCELLED
    # the result is left to its worker; a later run (prefetch or load) sees the mark
    job_input = await store.load_job_input(record.ref, 0)
    assert job_input is not None and job_input.cancel == TASK_CANCELLED
    assert job_input.existing_result is None
    assert await finals(store, record.ref) == []


async def test_the_claim_prefetches_the_mark(store: TaskStore, redis_async: aioredis.Redis) -> None:
    record = await submitted(store, n=1)
    sched = scheduler(redis_async)
    [job], _ = await sched.claim(1)
    assert job.job_input is not None and job.job_input.cancel is None
    await cancel(store, record)
    await sched.hand_back([job.lease])  # e.g. its worker shut down before it stopped
    [again], _ = await sched.claim(1)
    assert again.job_input is not None and again.job_input.cancel == TASK_CANCELLED


async def test_final_results_are_kept_and_cancelling_is_idempotent(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    record = await submitted(store, n=2)
    sched = scheduler(redis_async)
    claimed, _ = await sched.claim(1)
    index = int(claimed[0].job_id.rsplit(":", 1)[1])
    success = SuccessItem(record.ref.uuid, index, "done", "stop", 1)
    await store.finish_result(
        record.ref, Final(index, 1, success), job_class="b", token=claimed[0].token
    )
    assert await cancel(store, record) == {index: "final", 1 - index: "cancelled"}
    assert await cancel(store, record) == {0: "final", 1: "final"}
    after = await store.get(record.ref)
    assert after is not None and after.results[index] == success
    assert await redis_async.hmget(KEYS.task(record.ref), ["done", "errors"]) == [b"2", b"1"]
    assert len(await finals(store, record.ref)) == 2


async def test_a_cancelled_result_enqueues_its_webhook_delivery(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    record = await submitted(store, n=2, webhook=True)
    deliveries = DeliveryStore(redis_async, KEYS, retention_s=600, schedule_s=10)
    fates = await cancel(store, record, follow_up=deliveries.first_job)
    assert fates == {0: "cancelled", 1: "cancelled"}
    after = await store.get(record.ref)
    assert after is not None and sorted(after.deliveries) == [0, 1]
    assert (await scheduler(redis_async).depth())[HOOK] == 2
    pending = await redis_async.zrange(KEYS.pending_deliveries, 0, -1)
    assert sorted(p.decode() for p in pending) == [
        KEYS.delivery_job_id(record.ref, i) for i in (0, 1)
    ]
    loaded = await deliveries.load(record.ref, 1)
    assert loaded is not None and loaded.item["error"]["code"] == TASK_CANCELLED


async def test_a_delayed_rerun_is_unqueued_and_outranks_earlier_attempts(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    record = await submitted(store, n=1)
    sched = scheduler(redis_async)
    [job], _ = await sched.claim(1)
    job_id = KEYS.job_id(record.ref, 0)
    await redis_async.set(ARQ_RETRY_PREFIX + job_id, 3)  # arq counted three runs
    await sched.hand_back([job.lease], int(time.time() * 1000) + 60_000)
    assert await cancel(store, record) == {0: "cancelled"}
    [event] = await finals(store, record.ref)
    assert event["a"] == 3  # a stream that saw attempt 3's deltas still shows this final
    assert await redis_async.zcard(KEYS.queue_prefix + "delayed") == 0
    assert not await redis_async.exists(ARQ_JOB_PREFIX + job_id, ARQ_RETRY_PREFIX + job_id)


async def test_a_task_that_is_gone_has_nothing_to_cancel(
    store: TaskStore, redis_async: aioredis.Redis
) -> None:
    record = await submitted(store, n=1)
    await redis_async.delete(KEYS.task(record.ref))
    assert await cancel(store, record) == {}
    assert json.loads(await redis_async.get(KEYS.job(KEYS.job_id(record.ref, 0))) or "{}")


async def test_the_lua_final_event_matches_the_python_one(redis_async: aioredis.Redis) -> None:
    """The cancel script spells the final event in Lua; it must be the contract's bytes."""
    item = ErrorItem(str(uuid.uuid4()), 3, TASK_CANCELLED, "gone")
    script = LUA_FINAL_EVENT + "return final_event(ARGV[1], ARGV[2], ARGV[3])"
    lua = await redis_async.eval(script, 0, 3, 2, item.encode())  # type: ignore[misc]
    assert lua == Final(3, 2, item).encode()
    assert decode_event(lua) == Final(3, 2, item)
