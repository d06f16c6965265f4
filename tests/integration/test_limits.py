"""Per-key limits against a real redis-server: the token buckets (folded into the submit
script, and the read bucket), tokens per minute, and tenant-hash overrides."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from core.keys import Keys, TaskRef
from core.limits import BucketDefaults, ReadBucket, UsageMeter
from core.store import NewTask, SubmitOutcome, TaskStore
from devenv.redis import RedisServer

KEYS = Keys("tw", "tw:queue")
SLOW = 0.001  # tokens a second: nothing refills during a test


def store(
    redis: aioredis.Redis, rate: float = 0, burst: float = 0, tpm: int = 0, **kwargs: int
) -> TaskStore:
    return TaskStore(
        redis,
        KEYS,
        retention_s=600,
        rate=BucketDefaults(rate, burst),
        tokens_per_minute=tpm,
        **kwargs,
    )


def new_tasks(owner: str, count: int) -> list[NewTask]:
    return [
        NewTask(TaskRef(owner, str(uuid.uuid4())), f"fp{i}", {"deliveryMethod": "async"}, [i])
        for i in range(count)
    ]


def kinds(outcomes: list[SubmitOutcome]) -> list[str]:
    return [
        "created" if o.created else (o.limited.kind if o.limited else "other") for o in outcomes
    ]


async def test_a_batch_takes_one_token_per_task_up_to_the_burst(
    redis_async: aioredis.Redis,
) -> None:
    tasks = new_tasks("aaaa", 8)
    outcomes = await store(redis_async, SLOW, 5).submit(tasks)
    assert kinds(outcomes) == ["created"] * 5 + ["rate"] * 3
    hit = outcomes[5].limited
    assert hit is not None and hit.limit == SLOW and hit.retry_after_s > 60
    # the same tasks again are no new work: they cost nothing and are not refused
    again = await store(redis_async, SLOW, 5).submit(tasks[:5])
    assert [o.existing_fingerprint for o in again] == [t.fingerprint for t in tasks[:5]]


async def test_the_bucket_refills_at_its_rate(redis_async: aioredis.Redis) -> None:
    limited = store(redis_async, rate=20, burst=1)
    assert kinds(await limited.submit(new_tasks("aaaa", 2))) == ["created", "rate"]
    refused = (await limited.submit(new_tasks("aaaa", 1)))[0].limited
    assert refused is not None and 0 < refused.retry_after_s <= 0.05  # one token: 1/20 s
    deadline = asyncio.get_running_loop().time() + 5
    while (await limited.submit(new_tasks("aaaa", 1)))[0].limited is not None:
        assert asyncio.get_running_loop().time() < deadline, "the bucket never refilled"
        await asyncio.sleep(0.01)


async def test_zero_is_unlimited(redis_async: aioredis.Redis) -> None:
    outcomes = await store(redis_async).submit(new_tasks("aaaa", 300))
    assert all(o.created for o in outcomes)
    assert await redis_async.exists(KEYS.rate_bucket("aaaa")) == 0  # no state kept


async def test_the_tenant_hash_overrides_the_defaults(redis_async: aioredis.Redis) -> None:
    await redis_async.hset(KEYS.tenant("aaaa"), mapping={"rps": SLOW, "burst": 2})  # type: ignore[misc]
    unlimited = store(redis_async)
    assert kinds(await unlimited.submit(new_tasks("aaaa", 4))) == ["created"] * 2 + ["rate"] * 2
    assert all(o.created for o in await unlimited.submit(new_tasks("bbbb", 4)))
    # and a key may be freed from a default limit with 0
    await redis_async.hset(KEYS.tenant("cccc"), "rps", 0)  # type: ignore[misc]
    limited = store(redis_async, SLOW, 1)
    assert all(o.created for o in await limited.submit(new_tasks("cccc", 4)))


async def test_refused_tasks_take_no_token(redis_async: aioredis.Redis) -> None:
    limited = store(redis_async, SLOW, 3, max_queued_per_key=1)
    assert kinds(await limited.submit(new_tasks("aaaa", 3))) == ["created", "queued", "queued"]
    await redis_async.hset(KEYS.tenant("aaaa"), "max_queued", 100)  # type: ignore[misc]
    # the bucket held 3 and one task was created: two tokens are left
    assert kinds(await limited.submit(new_tasks("aaaa", 3))) == ["created", "created", "rate"]


async def test_two_processes_share_one_bucket(redis_server: RedisServer) -> None:
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(2)]
    try:
        stores = [store(client, SLOW, 10) for client in clients]
        rounds = await asyncio.gather(
            *(s.submit(new_tasks("aaaa", 5)) for s in stores for _ in range(4))
        )
        created = sum(o.created for outcomes in rounds for o in outcomes)
        assert created == 10  # 40 tried over two connections; the burst, not twice it
    finally:
        for client in clients:
            await client.aclose()


async def test_the_read_bucket(redis_async: aioredis.Redis) -> None:
    bucket = ReadBucket(redis_async, KEYS, BucketDefaults(SLOW, 3))
    assert await bucket.take("aaaa", 2) is None
    hit = await bucket.take("aaaa", 2)
    assert hit is not None and hit.kind == "read_rate" and hit.retry_after_s > 60
    assert await bucket.take("aaaa", 1) is None
    # a request never costs more than a full bucket, so a big one is not refused forever
    assert await bucket.take("bbbb", 50) is None
    assert await ReadBucket(redis_async, KEYS, BucketDefaults()).take("aaaa", 100) is None


async def test_spent_tokens_per_minute_refuse_new_work_until_the_minute_ends(
    redis_async: aioredis.Redis,
) -> None:
    meter = UsageMeter(redis_async, KEYS)
    limited = store(redis_async, tpm=100)
    for _ in range(3):  # a minute may end between the usage and the submission: try again
        minute = await redis_minute(redis_async)
        await meter.record("aaaa", 60)
        assert (await limited.submit(new_tasks("aaaa", 1)))[0].created
        assert await meter.record("aaaa", 40) >= 100
        [outcome] = await limited.submit(new_tasks("aaaa", 1))
        if await redis_minute(redis_async) == minute:
            break
    hit = outcome.limited
    assert hit is not None and hit.kind == "tokens" and hit.limit == 100
    assert 0 < hit.retry_after_s <= 60
    assert all(o.created for o in await limited.submit(new_tasks("bbbb", 2)))  # others run
    ttl = await redis_async.pttl(KEYS.token_usage("aaaa", minute))
    assert 60_000 < ttl <= 120_000  # counters expire on their own


async def redis_minute(redis: aioredis.Redis) -> int:
    seconds, _ = await redis.time()
    return int(seconds) // 60
