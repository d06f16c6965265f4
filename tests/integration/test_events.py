"""The event hub and event streams against a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from core.contract import Delta
from core.events import RESYNC, Event, EventHub, follow
from core.keys import Keys, TaskRef
from core.store import TaskStore


@pytest.fixture
async def hub(redis_async: aioredis.Redis) -> AsyncIterator[EventHub]:
    events = EventHub(redis_async, unsubscribe_after_s=0.2)
    await events.start()
    yield events
    await events.close()


@pytest.fixture
def store(redis_async: aioredis.Redis) -> TaskStore:
    return TaskStore(redis_async, Keys("tw", "tw:queue"), retention_s=3600)


def delta(seq: int) -> Delta:
    return Delta(0, 1, seq, text=f"piece {seq}")


def seq(event: Event) -> int:
    assert isinstance(event.body, Delta)
    return event.body.seq


def new_ref() -> TaskRef:
    return TaskRef("owner1", str(uuid.uuid4()))


async def pubsub_clients(client: aioredis.Redis) -> int:
    clients = await client.client_list()
    return sum(1 for c in clients if int(c.get("sub", 0)) > 0)


async def test_live_events_arrive_in_order(hub: EventHub, store: TaskStore) -> None:
    ref = new_ref()
    async with hub.subscribe(store.keys.events(ref)) as sub:
        await sub.ready()
        ids = await store.append_events(ref, [delta(i) for i in range(5)])
        got = [await asyncio.wait_for(sub.get(), 5) for _ in range(5)]
    assert [g.id for g in got] == ids  # type: ignore[union-attr]
    assert [g.body for g in got] == [delta(i) for i in range(5)]  # type: ignore[union-attr]


async def test_many_waiters_share_one_connection(
    hub: EventHub, store: TaskStore, redis_async: aioredis.Redis
) -> None:
    refs = [new_ref() for _ in range(300)]
    async with asyncio.timeout(20):
        subs = []
        contexts = [hub.subscribe(store.keys.events(ref)) for ref in refs]
        for context in contexts:
            subs.append(await context.__aenter__())
        await asyncio.gather(*(sub.ready() for sub in subs))
        assert await pubsub_clients(redis_async) == 1
        for ref in refs:
            await store.append_events(ref, [Delta(0, 1, 1, text=ref.uuid)])
        for ref, sub in zip(refs, subs, strict=True):
            event = await sub.get()
            assert isinstance(event, Event)
            assert event.body == Delta(0, 1, 1, text=ref.uuid)
        for context in contexts:
            await context.__aexit__(None, None, None)
    assert hub.subscriber_count == 0


async def test_follow_replays_then_goes_live_without_gap_or_duplicate(
    hub: EventHub, store: TaskStore
) -> None:
    ref = new_ref()
    first = await store.append_events(ref, [delta(i) for i in range(3)])
    seen: list[int] = []

    async def reader() -> None:
        async for event in follow(hub, store, ref):
            seen.append(seq(event))
            if len(seen) == 8:
                return

    task = asyncio.create_task(reader())
    for i in range(3, 8):
        await store.append_events(ref, [delta(i)])
    await asyncio.wait_for(task, 10)
    assert seen == list(range(8))
    # resuming after an id gives exactly what came after it
    resumed: list[int] = []
    async for event in follow(hub, store, ref, after=first[1]):
        resumed.append(seq(event))
        if len(resumed) == 6:
            break
    assert resumed == list(range(2, 8))


async def test_reconnect_resyncs_without_loss(
    hub: EventHub, store: TaskStore, redis_async: aioredis.Redis
) -> None:
    ref = new_ref()
    seen: list[int] = []
    done = asyncio.Event()

    async def reader() -> None:
        async for event in follow(hub, store, ref):
            seen.append(seq(event))
            if len(seen) == 40:
                done.set()
                return

    task = asyncio.create_task(reader())
    for i in range(40):
        await store.append_events(ref, [delta(i)])
        if i == 15:
            await redis_async.client_kill_filter(_type="pubsub")
    await asyncio.wait_for(done.wait(), 15)
    await task
    assert seen == list(range(40))


async def test_a_reader_that_falls_behind_gets_resync(hub: EventHub, store: TaskStore) -> None:
    ref = new_ref()
    async with hub.subscribe(store.keys.events(ref)) as sub:
        await sub.ready()
        await store.append_events(ref, [delta(i) for i in range(1100)])  # queue holds 1024

        async def overflowed() -> None:
            while not sub.lagged:  # noqa: ASYNC110 (waiting on the hub's own state)
                await asyncio.sleep(0.01)

        await asyncio.wait_for(overflowed(), 10)
        assert sub.queue.full()
        assert await sub.get() is RESYNC


async def test_idle_channels_are_unsubscribed(
    hub: EventHub, store: TaskStore, redis_async: aioredis.Redis
) -> None:
    ref = new_ref()
    channel = store.keys.events(ref)
    async with hub.subscribe(channel) as sub:
        await sub.ready()
        assert dict(await redis_async.pubsub_numsub(channel))[channel.encode()] == 1

    async def gone() -> None:
        while dict(await redis_async.pubsub_numsub(channel))[channel.encode()] != 0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    await asyncio.wait_for(gone(), 5)


async def test_many_idle_channels_go_in_one_sweep_and_a_returning_reader_is_live(
    hub: EventHub, store: TaskStore, redis_async: aioredis.Redis
) -> None:
    refs = [new_ref() for _ in range(50)]
    channels = [store.keys.events(ref) for ref in refs]
    for channel in channels:
        async with hub.subscribe(channel) as sub:
            await sub.ready()
    counts = dict(await redis_async.pubsub_numsub(*channels))
    assert set(counts.values()) == {1}

    async def gone() -> None:
        while any(dict(await redis_async.pubsub_numsub(*channels)).values()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    await asyncio.wait_for(gone(), 5)
    # a reader coming back to a channel the sweep unsubscribed subscribes it again
    ref = refs[0]
    async with hub.subscribe(channels[0]) as sub:
        await sub.ready()
        assert sub.live
        await store.append_events(ref, [delta(1)])
        event = await asyncio.wait_for(sub.get(), 5)
        assert isinstance(event, Event) and seq(event) == 1
