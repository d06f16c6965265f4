"""API keys managed at run time, against a real redis-server: the records (hashed, never in
clear), revoke, rotate with a grace window, limits in the tenant hash beside startup
overrides, and an API process's in-memory ring kept current by notices and the version poll."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from core.apikeys import ApiKeyStore, KeyConflict, KeyNotFound, digest_hex
from core.errors import AuthenticationFailed
from core.events import EventHub
from core.keys import Keys
from core.settings import Settings
from service.auth import KeyRing, KeyRingSync, key_digest, owner_id
from service.limits import apply_key_limits

KEYS = Keys("tw", "tw:queue")
ENV_KEY = "tw-env-key-0123456789"


@pytest.fixture
def store(redis_async: aioredis.Redis) -> ApiKeyStore:
    return ApiKeyStore(redis_async, KEYS)


async def everything_stored(redis: aioredis.Redis) -> bytes:
    """Every key name and value in Redis, as one blob (to look for a clear key in)."""
    parts: list[bytes] = []
    async for name in redis.scan_iter():
        parts.append(name)
        kind = (await redis.type(name)).decode()
        if kind == "hash":
            parts.extend(k + v for k, v in (await redis.hgetall(name)).items())  # type: ignore[misc]
        elif kind == "set":
            parts.extend(await redis.smembers(name))  # type: ignore[misc]
        elif kind == "string":
            parts.append(await redis.get(name) or b"")
    return b"\n".join(parts)


async def test_create_stores_the_digest_only(store: ApiKeyStore, redis_async) -> None:
    new = await store.create("acme", expires=time.time() + 60)
    record = new.record
    assert new.api_key.startswith("twk_") and len(new.api_key) > 40
    assert record.digest == digest_hex(new.api_key)
    assert record.owner == record.digest[:16] == owner_id(key_digest(new.api_key))
    assert await store.get(record.digest) == record
    assert await store.owner_exists(record.owner)
    assert await redis_async.smembers(KEYS.owner_keys(record.owner)) == {record.digest.encode()}
    blob = await everything_stored(redis_async)
    assert new.api_key.encode() not in blob
    assert new.api_key.removeprefix("twk_").encode() not in blob
    assert "api_key" not in json.dumps(record.public()).lower()
    assert record.public()["status"] == "active"


async def test_resolve_by_key_id(store: ApiKeyStore) -> None:
    new = await store.create("a")
    assert (await store.resolve(new.record.key_id)).digest == new.record.digest
    assert (await store.resolve(new.record.digest.upper())).digest == new.record.digest
    with pytest.raises(KeyNotFound):
        await store.resolve("0" * 12 if not new.record.digest.startswith("0") else "f" * 12)
    with pytest.raises(KeyNotFound):
        await store.resolve("abc")  # too short to name one key
    with pytest.raises(KeyNotFound):
        await store.create("b", owner="0123456789abcdef")  # not an owner


async def test_another_key_of_an_owner(store: ApiKeyStore) -> None:
    first = await store.create("acme")
    second = await store.create("acme ci", owner=first.record.owner)
    assert second.record.owner == first.record.owner
    assert second.record.digest != first.record.digest


async def test_revoke_and_rotate(store: ApiKeyStore) -> None:
    old = await store.create("acme")
    version = await store.version()
    new, before = await store.rotate(old.record.key_id, grace_s=30)
    assert await store.version() == version + 1
    assert new.record.owner == old.record.owner and new.record.name == "acme"
    assert before.replaced_by == new.record.key_id and before.revoked is None
    assert before.expires == pytest.approx(time.time() + 30, abs=2)
    assert await store.get(old.record.digest) == before
    assert before.status() == "rotating" and before.status(time.time() + 31) == "expired"
    # grace 0: the old key is refused at once
    newer, gone = await store.rotate(new.record.key_id, grace_s=0, name="acme 2")
    assert gone.revoked is not None and gone.status() == "revoked"
    assert newer.record.name == "acme 2" and newer.record.owner == old.record.owner
    with pytest.raises(KeyConflict):
        await store.rotate(new.record.key_id, grace_s=10)  # revoked: nothing to rotate
    revoked = await store.revoke(newer.record.key_id)
    assert revoked.status() == "revoked"
    assert (await store.get(newer.record.digest)) == revoked
    assert await store.revoke(newer.record.key_id) == revoked  # idempotent


async def test_grace_never_outlives_an_earlier_expiry(store: ApiKeyStore) -> None:
    old = await store.create("short", expires=time.time() + 5)
    _, before = await store.rotate(old.record.key_id, grace_s=3600)
    assert before.expires == old.record.expires


def test_ring_answers() -> None:
    ring = KeyRing([ENV_KEY])
    assert ring.authenticate(ENV_KEY) == owner_id(key_digest(ENV_KEY))
    from core.apikeys import KeyRecord

    now = time.time()
    keys = {name: f"twk_{name}" for name in ("ok", "expired", "revoked", "rotated")}
    records = {
        "ok": KeyRecord(digest_hex(keys["ok"]), "a" * 16, "ok", now),
        "expired": KeyRecord(digest_hex(keys["expired"]), "b" * 16, "x", now, expires=now - 1),
        "revoked": KeyRecord(digest_hex(keys["revoked"]), "c" * 16, "r", now, revoked=now),
        "rotated": KeyRecord(
            digest_hex(keys["rotated"]), "d" * 16, "o", now, expires=now - 1, replaced_by="ab"
        ),
    }
    ring.replace_managed(records.values())
    assert ring.authenticate(keys["ok"]) == "a" * 16
    for name, words in (
        ("expired", "expired at"),
        ("revoked", "Invalid API key"),
        ("rotated", "grace period ended"),
    ):
        with pytest.raises(AuthenticationFailed) as caught:
            ring.authenticate(keys[name])
        assert caught.value.code == "invalidApiKey" and words in str(caught.value), name
    with pytest.raises(AuthenticationFailed):
        ring.authenticate("twk_unknown")
    ring.update_managed(bytes.fromhex(records["ok"].digest), None)
    with pytest.raises(AuthenticationFailed):
        ring.authenticate(keys["ok"])


async def wait_for(condition: Callable[[], bool], within_s: float = 2.0) -> float:
    """Seconds until `condition()` held (fails after `within_s`)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > within_s:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


@pytest.fixture
async def hub(redis_async) -> AsyncIterator[EventHub]:
    events = EventHub(redis_async)
    await events.start()
    yield events
    await events.close()


def accepts(ring: KeyRing, key: str) -> bool:
    try:
        ring.authenticate(key)
    except AuthenticationFailed:
        return False
    return True


async def test_ring_follows_notices(store: ApiKeyStore, redis_async, hub: EventHub) -> None:
    before = await store.create("before start")
    ring = KeyRing([ENV_KEY])
    sync = KeyRingSync(ring, store, hub, poll_s=30)  # notices alone
    await sync.start()
    try:
        assert accepts(ring, before.api_key) and accepts(ring, ENV_KEY)
        new = await store.create("after start")
        took = await wait_for(lambda: accepts(ring, new.api_key))
        assert took < 0.5
        await store.revoke(new.record.key_id)
        await wait_for(lambda: not accepts(ring, new.api_key))
        rotated, _ = await store.rotate(before.record.key_id, grace_s=0)
        await wait_for(lambda: accepts(ring, rotated.api_key))
        assert not accepts(ring, before.api_key)
        assert sync.reloads == 1  # each change re-read its own records only
        assert sync.version == await store.version()
    finally:
        await sync.close()


async def test_ring_catches_a_missed_notice_by_polling(
    store: ApiKeyStore, redis_async, hub: EventHub
) -> None:
    ring = KeyRing([])
    sync = KeyRingSync(ring, store, hub, poll_s=0.1)
    await sync.start()
    try:
        # a change whose notice never came (a CLI killed between EXEC and PUBLISH)
        digest = digest_hex("twk_silent")
        await redis_async.hset(
            KEYS.apikey(digest), mapping={"owner": "e" * 16, "name": "s", "created": "1"}
        )  # type: ignore[misc]
        await redis_async.sadd(KEYS.apikey_index, digest)  # type: ignore[misc]
        await redis_async.incr(KEYS.apikey_version)
        await wait_for(lambda: accepts(ring, "twk_silent"))
        assert sync.reloads >= 2
    finally:
        await sync.close()


async def test_limits_live_in_the_tenant_hash(store: ApiKeyStore, redis_async) -> None:
    owner = (await store.create("acme")).record.owner
    assert await store.limits(owner) == {}
    limits = await store.set_limits(owner, {"rps": 5, "burst": 10, "max_queued": 3})
    assert limits == {"rps": 5, "burst": 10, "max_queued": 3}
    raw = await redis_async.hgetall(KEYS.tenant(owner))  # type: ignore[misc]
    assert raw == {b"rps": b"5", b"burst": b"10", b"max_queued": b"3", b"limits_src": b"runtime"}
    assert await store.set_limits(owner, {"rps": 0.5}, reset=["burst"]) == {
        "rps": 0.5,
        "max_queued": 3,
    }
    with pytest.raises(KeyConflict):
        await store.set_limits(owner, {"nonsense": 1})


async def test_startup_overrides_and_runtime_limits(store: ApiKeyStore, redis_async) -> None:
    env_a, env_b = "tw-env-a-0123456789", "tw-env-b-0123456789"
    a, b = owner_id(key_digest(env_a)), owner_id(key_digest(env_b))
    managed = (await store.create("m")).record.owner
    await store.set_limits(a, {"rps": 7})  # an env key's limits set at run time: kept
    await store.set_limits(b, {"rps": 8})  # ... unless the settings name the owner
    await store.set_limits(managed, {"max_queued": 9})
    await redis_async.hset(KEYS.tenant("f" * 16), "rps", 1)  # type: ignore[misc]
    settings = Settings(
        api_keys=f"{env_a},{env_b},tw-env-c-0123456789",  # type: ignore[arg-type]
        key_limits={env_b: {"burst": 4}, "f" * 16: {"max_running": 2}},  # type: ignore[arg-type]
    )
    await apply_key_limits(redis_async, KEYS, settings)
    assert await store.limits(a) == {"rps": 7}
    assert await store.limits(b) == {"burst": 4}
    assert await store.limits_source(b) is None
    assert await store.limits(managed) == {"max_queued": 9}
    assert await store.limits("f" * 16) == {"max_running": 2}


async def test_ring_resubscribes_after_a_lost_connection(
    store: ApiKeyStore, redis_async, hub: EventHub
) -> None:
    ring = KeyRing([])
    sync = KeyRingSync(ring, store, hub, poll_s=30)  # no poll to fall back on
    await sync.start()
    try:
        await redis_async.client_kill_filter(_type="pubsub")
        await wait_for(lambda: sync.reloads >= 2)  # subscribed again, and re-read all
        new = await store.create("after the drop")
        await wait_for(lambda: accepts(ring, new.api_key))
    finally:
        await sync.close()
