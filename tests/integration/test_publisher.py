"""The result publisher against a real Redis: coalescing, ordering and resuming a re-run."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from core.contract import Delta, Final, SuccessItem
from core.keys import Keys, TaskRef
from core.store import NewTask, TaskStore
from devenv.redis import RedisServer
from worker.publisher import ResultPublisher, ResumeMismatch


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[TaskStore]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield TaskStore(client, Keys("tw", "tw:queue"), retention_s=3600)
    await client.aclose()


async def new_task(store: TaskStore) -> TaskRef:
    ref = TaskRef("o", str(uuid.uuid4()))
    [outcome] = await store.submit([NewTask(ref, "fp", {"x": 1}, [1])])
    assert outcome.created
    return ref


def success(ref: TaskRef, text: str = "") -> SuccessItem:
    return SuccessItem(ref.uuid, 0, text, "stop", 1)


async def deltas(store: TaskStore, ref: TaskRef) -> list[Delta]:
    return [d for _, d in await store.read_events(ref) if isinstance(d, Delta)]


async def test_many_small_deltas_become_few_appends(store: TaskStore) -> None:
    ref = await new_task(store)
    publisher = ResultPublisher(store, ref, 0, 1, eager_first=True, interval_s=10, max_chars=100)
    words = [f" w{i:03d}" for i in range(200)]  # 1000 characters
    for word in words:
        publisher.add(text=word)
    outcome = await publisher.finish(success(ref, "".join(words)))
    assert outcome.written and outcome.done == 1
    stored = await deltas(store, ref)
    assert "".join(d.text for d in stored) == "".join(words)
    assert stored[0].text == words[0]  # the first delta went out alone, at once
    assert len(stored) <= 12  # 1 + 1000 / 100 (+ the tail with the final)
    assert publisher.appends <= 12
    assert [d.seq for d in stored] == list(range(1, len(stored) + 1))


async def test_text_and_reasoning_never_share_an_event(store: TaskStore) -> None:
    ref = await new_task(store)
    publisher = ResultPublisher(store, ref, 0, 1, eager_first=False, interval_s=10)
    for piece in ("think ", "more "):
        publisher.add(reasoning=piece)
    for piece in ("Hello ", "world"):
        publisher.add(text=piece)
    await publisher.finish(success(ref))
    stored = await store.redis.xrange(store.keys.events(ref))
    fields = [set(json.loads(raw[b"d"])) - {"t", "i", "a", "s"} for _id, raw in stored]
    assert fields == [{"rc"}, {"text"}, {"r"}]
    reasoning, text = await deltas(store, ref)
    assert reasoning.reasoning == "think more " and text.text == "Hello world"


async def test_a_rerun_publishes_only_what_follows_the_published_prefix(store: TaskStore) -> None:
    ref = await new_task(store)
    first = ResultPublisher(store, ref, 0, 1, interval_s=0)
    for piece in ("The ", "quick ", "brown "):
        first.add(text=piece)
    await first._drain_task  # type: ignore[misc]  # the crashed run got this far
    second = ResultPublisher(store, ref, 0, 2, interval_s=0, published_text="The quick brown ")
    for piece in ("The quick ", "bro", "wn fox", " jumps"):
        second.add(text=piece)
    second.check_caught_up()
    await second.finish(success(ref))
    text = "".join(d.text for d in await deltas(store, ref))
    assert text == "The quick brown fox jumps"


async def test_a_rerun_that_diverges_is_refused(store: TaskStore) -> None:
    ref = await new_task(store)
    publisher = ResultPublisher(store, ref, 0, 2, published_text="The quick brown ")
    with pytest.raises(ResumeMismatch):
        publisher.add(text="A different answer")
    short = ResultPublisher(store, ref, 0, 2, published_text="The quick brown ")
    short.add(text="The quick")
    with pytest.raises(ResumeMismatch):
        short.check_caught_up()


async def test_a_final_result_is_never_overwritten(store: TaskStore) -> None:
    ref = await new_task(store)
    one = ResultPublisher(store, ref, 0, 1)
    two = ResultPublisher(store, ref, 0, 2)
    assert (await one.finish(success(ref, "first"))).written
    assert not (await two.finish(success(ref, "second"))).written
    record = await store.get(ref)
    assert record is not None and record.results[0] == success(ref, "first")
    finals = [d for _, d in await store.read_events(ref) if isinstance(d, Final)]
    assert len(finals) == 1
