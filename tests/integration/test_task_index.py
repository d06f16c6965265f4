"""The per-key task index the submit script writes, and its paged read, on a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from core.keys import Keys, TaskRef
from core.store import ListCursor, NewTask, TaskStore
from devenv.redis import RedisServer


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[TaskStore]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield TaskStore(client, Keys("tw", "tw:queue"), retention_s=3600)
    await client.aclose()


def tasks(owner: str, count: int) -> list[NewTask]:
    return [NewTask(TaskRef(owner, str(uuid.uuid4())), "fp", {"x": 1}, [1]) for _ in range(count)]


async def every_page(store: TaskStore, owner: str, limit: int, **kwargs: object) -> list[str]:
    seen: list[str] = []
    after: ListCursor | None = None
    for _ in range(1000):
        page = await store.list_page(owner, limit=limit, after=after, **kwargs)  # type: ignore[arg-type]
        assert len(page.records) <= limit
        seen.extend(record.ref.uuid for record in page.records)
        if page.next is None:
            return seen
        after = page.next
    raise AssertionError("the pages never ended")


async def test_pages_are_newest_first_without_gaps_or_repeats(store: TaskStore) -> None:
    # three requests: the tasks of one request share a creation time (ties by taskUUID)
    batches = [tasks("a", 7), tasks("a", 5), tasks("a", 9)]
    for batch in batches:
        assert all(o.created for o in await store.submit(batch))
    await store.submit(tasks("b", 4))  # another key's tasks are not listed
    seen = await every_page(store, "a", limit=4)
    assert len(seen) == 21 and len(set(seen)) == 21
    # newest request first; within one request, descending taskUUID
    expected = [
        t.ref.uuid
        for batch in reversed(batches)
        for t in sorted(batch, key=lambda t: t.ref.uuid)[::-1]
    ]
    assert seen == expected
    # a re-sent taskUUID is not listed twice
    await store.submit(batches[0][:2])
    assert len(await every_page(store, "a", limit=100)) == 21


async def test_status_filter_and_expired_records(store: TaskStore) -> None:
    batch = tasks("a", 6)
    await store.submit(batch)
    # two finished (one success, one error), one record expired
    await store.redis.hset(store.keys.task(batch[0].ref), mapping={"done": 1, "errors": 0})
    await store.redis.hset(store.keys.task(batch[1].ref), mapping={"done": 1, "errors": 1})
    await store.redis.delete(store.keys.task(batch[2].ref))
    assert set(await every_page(store, "a", limit=2, status="success")) == {batch[0].ref.uuid}
    assert set(await every_page(store, "a", limit=2, status="error")) == {batch[1].ref.uuid}
    processing = await every_page(store, "a", limit=1, status="processing")
    assert set(processing) == {t.ref.uuid for t in batch[3:]}
    # the expired record's entry was dropped from the index on the way
    members = await store.redis.zrange(store.keys.task_index("a"), 0, -1)
    assert batch[2].ref.uuid.encode() not in members and len(members) == 5


async def test_a_filtered_scan_stops_at_its_budget_with_a_cursor(store: TaskStore) -> None:
    await store.submit(tasks("a", 30))
    page = await store.list_page("a", limit=10, status="success", scan_max=12)
    assert page.records == [] and page.next is not None
    rest = await store.list_page("a", limit=10, status="success", after=page.next)
    assert rest.records == [] and rest.next is None


async def test_submit_trims_entries_whose_records_expired(store: TaskStore) -> None:
    index = store.keys.task_index("a")
    old = tasks("a", 3)
    await store.submit(old)
    # make them look older than the retention: one record still exists, two are gone
    for t in old:
        await store.redis.zadd(index, {t.ref.uuid: 1000.0})
    await store.redis.delete(store.keys.task(old[0].ref), store.keys.task(old[1].ref))
    await store.submit(tasks("a", 1))
    members = {m.decode() for m in await store.redis.zrange(index, 0, -1)}
    assert old[2].ref.uuid in members
    assert old[0].ref.uuid not in members and old[1].ref.uuid not in members
    assert len(members) == 2
    assert 0 < await store.redis.ttl(index) <= 2 * 3600
