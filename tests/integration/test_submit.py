"""The submit path on a real Redis: one EVALSHA for one task (its script publishing the
workers' wake-up), a pipeline for several, and the script loaded again when Redis's script
cache was emptied (a NOSCRIPT reply means the script did not run)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from core.keys import Keys, TaskRef
from core.store import NewTask, TaskStore
from devenv.redis import RedisServer


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def new_tasks(count: int) -> list[NewTask]:
    return [
        NewTask(TaskRef("owner", str(uuid.uuid4())), "fp", {"x": 1}, [1, 2]) for _ in range(count)
    ]


async def wakes(client: aioredis.Redis, keys: Keys, submit: object) -> int:
    """How many wake-ups are published while `submit` (a coroutine) runs."""
    pubsub = client.pubsub()
    await pubsub.subscribe(keys.wake)
    await pubsub.get_message(timeout=1)  # the confirmation
    await submit  # type: ignore[misc]
    count = 0
    while await pubsub.get_message(timeout=0.2) is not None:
        count += 1
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    return count


async def test_one_task_is_stored_with_its_jobs_and_wakes_the_workers_once(
    client: aioredis.Redis,
) -> None:
    keys = Keys(f"tw{uuid.uuid4().hex[:6]}", "tw:queue")
    store = TaskStore(client, keys, retention_s=3600)
    [task] = new_tasks(1)
    outcomes: list[object] = []

    async def submit() -> None:
        outcomes.extend(await store.submit([task]))

    assert await wakes(client, keys, submit()) == 1
    assert [o.created for o in outcomes] == [True]  # type: ignore[attr-defined]
    for i in range(2):
        assert await client.exists(keys.job(keys.job_id(task.ref, i)))
    # the same task again: no new work, and no wake-up
    outcomes.clear()
    assert await wakes(client, keys, submit()) == 0
    [again] = outcomes
    assert not again.created and again.existing_fingerprint == "fp"  # type: ignore[attr-defined]


async def test_several_tasks_wake_the_workers_once(client: aioredis.Redis) -> None:
    keys = Keys(f"tw{uuid.uuid4().hex[:6]}", "tw:queue")
    store = TaskStore(client, keys, retention_s=3600)
    await store.submit(new_tasks(1))  # the script is cached (a NOSCRIPT pass wakes twice)
    tasks = new_tasks(3)
    outcomes: list[object] = []

    async def submit() -> None:
        outcomes.extend(await store.submit(tasks))

    assert await wakes(client, keys, submit()) == 1
    assert [o.created for o in outcomes] == [True, True, True]  # type: ignore[attr-defined]


@pytest.mark.parametrize("count", [1, 3])
async def test_an_emptied_script_cache_is_filled_again(client: aioredis.Redis, count: int) -> None:
    keys = Keys(f"tw{uuid.uuid4().hex[:6]}", "tw:queue")
    store = TaskStore(client, keys, retention_s=3600)
    await store.submit(new_tasks(1))  # the script is cached
    await client.script_flush()
    tasks = new_tasks(count)
    outcomes = await store.submit(tasks)
    assert [o.created for o in outcomes] == [True] * count
    stored = await asyncio.gather(*(client.hget(keys.task(t.ref), "fp") for t in tasks))  # type: ignore[misc]
    assert stored == [b"fp"] * count
