"""The queue's depth as exported (core/metrics.py) against a real redis-server: read from the
scheduler's own keys, and exported by one process at a time (the lock, its handover)."""

from __future__ import annotations

import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from core.keys import Keys
from core.metrics import QueueExporter, read_queue
from core.scheduler import BATCH, HOOK, INTERACTIVE, Fairness, Scheduler, now_ms

KEYS = Keys("tw", "tw:queue")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def samples(text: bytes) -> dict[str, float]:
    return {
        sample.name + "".join(f"/{v}" for v in sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


async def test_depth_waiting_scheduled_and_leased(redis_async: aioredis.Redis) -> None:
    sched = Scheduler(redis_async, KEYS, 30.0, Fairness())
    await sched.enqueue([(INTERACTIVE, f"own1:t{i}:0", None) for i in range(3)])
    await sched.enqueue([(BATCH, f"own1:b{i}:0", None) for i in range(5)])
    await sched.enqueue([(HOOK, "own1:h0:0:webhook", now_ms() + 60_000)])  # later
    claimed, _ = await sched.claim(2, "i")
    assert len(claimed) == 2
    snapshot = await read_queue(redis_async, KEYS)
    assert (snapshot.waiting["i"], snapshot.waiting["b"]) == (1, 5)
    assert snapshot.scheduled == 1
    assert snapshot.leased == 2
    assert samples(snapshot.exposition()) == {
        "taskwire_queue_waiting/interactive": 1,
        "taskwire_queue_waiting/batch": 5,
        "taskwire_queue_waiting/webhook": 0,
        "taskwire_queue_scheduled": 1,
        "taskwire_queue_leased": 2,
    }


async def test_one_exporter_at_a_time_with_a_handover(redis_async: aioredis.Redis) -> None:
    clock = Clock()
    first = QueueExporter(redis_async, KEYS, ttl_s=15, handover_s=30, clock=clock)
    second = QueueExporter(redis_async, KEYS, ttl_s=15, handover_s=30, clock=clock)
    await first.renew()
    await second.renew()
    assert not first.exporting() and not second.exporting()  # the handover first
    clock.now += 30
    await first.renew()
    await second.renew()
    assert first.exporting() and not second.exporting()
    assert await first.exposition() != b""
    assert await second.exposition() == b""

    # the holder stops renewing (lost Redis, or stuck): it stops exporting when its lock
    # would have lapsed, before another could take it
    clock.now += 15
    assert not first.exporting()
    await redis_async.delete(first.key)  # Redis let it lapse
    await second.renew()
    assert not second.exporting()  # taken, but waits out the handover
    clock.now += 30
    await second.renew()
    assert second.exporting()
    await first.renew()
    assert not first.exporting()  # held by the other now

    # a graceful stop releases the lock for the next one at once (still after its handover)
    await second.close()
    assert await redis_async.get(second.key) is None
    await first.renew()
    assert not first.exporting()
    clock.now += 30
    await first.renew()
    assert first.exporting()


async def test_no_handover_exports_at_once(redis_async: aioredis.Redis) -> None:
    exporter = QueueExporter(redis_async, KEYS, ttl_s=5, handover_s=0)
    await exporter.start()
    try:
        assert exporter.exporting()
        assert "taskwire_queue_waiting/interactive" in samples(await exporter.exposition())
    finally:
        await exporter.close()
