"""The API's side of per-key limits: overrides written at startup, the read bucket, and
the 429 errors that name the limit hit (the limits themselves are Lua: core/limits.py)."""

from __future__ import annotations

from typing import Any

import structlog
from redis.asyncio import Redis

from core.apikeys import LIMITS_SOURCE, RUNTIME
from core.errors import QueueLimitExceeded, RateLimited, TokenLimitExceeded
from core.keys import Keys
from core.limits import TENANT_FIELDS, LimitHit, ReadBucket
from core.settings import KeyLimits, Settings
from service.auth import key_digest, owner_id

log = structlog.get_logger("taskwire.limits")

# Tasks that draw on the read bucket (a textInference task is charged by the submit script).
READ_TASK_TYPES = frozenset({"getResponse", "imageUpload"})


def limit_error(hit: LimitHit) -> RateLimited:
    """The 429 for a refused task: its code and message name the limit and its value."""
    wait = hit.retry_after_s
    if hit.kind == "tokens":
        return TokenLimitExceeded(
            f"This API key has used its {hit.limit:g} upstream tokens per minute "
            f"(tokens per minute limit); new tasks are accepted again in {wait:.0f} s.",
            retry_after=wait,
        )
    if hit.kind == "queued":
        return QueueLimitExceeded(
            f"This API key already has {hit.limit:g} results waiting to run (its "
            "queued-results limit); submit more as they finish.",
            retry_after=wait,
        )
    if hit.kind == "read_rate":
        return RateLimited(
            f"This API key is over its rate of {hit.limit:g} getResponse and imageUpload "
            "tasks per second (read rate limit); slow down.",
            retry_after=wait,
        )
    return RateLimited(
        f"This API key is over its rate of {hit.limit:g} new tasks per second (request "
        "rate limit); slow down.",
        retry_after=wait,
    )


def read_cost(tasks: list[Any]) -> int:
    """How many tokens of the read bucket a request's tasks take."""
    return sum(1 for task in tasks if isinstance(task, dict) and _is_read(task.get("taskType")))


def _is_read(task_type: object) -> bool:
    # anything may arrive as a taskType here (validation comes later): only strings match
    return isinstance(task_type, str) and task_type in READ_TASK_TYPES


async def check_reads(bucket: ReadBucket, owner: str, tasks: list[Any]) -> None:
    """Refuse (RateLimited) a request whose getResponse / imageUpload tasks the key's read
    bucket cannot pay for; a request with none of them costs nothing and no round trip."""
    cost = read_cost(tasks)
    if cost:
        hit = await bucket.take(owner, cost)
        if hit is not None:
            raise limit_error(hit)


def override_owners(settings: Settings) -> dict[str, KeyLimits]:
    """The overrides by owner id: an entry named by an accepted API key is hashed to its
    owner id (the clear key goes no further); any other name must be an owner id."""
    by_key = {key: owner_id(key_digest(key)) for key in settings.all_api_keys()}
    owners: dict[str, KeyLimits] = {}
    for name, limits in settings.key_limits.items():
        owner = by_key.get(name, name)
        if owner == name and not _is_owner_id(name):
            raise ValueError(
                "TASKWIRE_KEY_LIMITS names something that is neither an accepted API key nor "
                f"an owner id (16 hex digits): an entry of {len(name)} characters"
            )
        owners[owner] = limits
    return owners


def _number(value: float) -> str:
    """As Lua's tonumber reads it, and people too: "2", not "2.0"."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _is_owner_id(name: str) -> bool:
    return len(name) == 16 and all(ch in "0123456789abcdef" for ch in name)


async def apply_key_limits(redis: Redis, keys: Keys, settings: Settings) -> int:
    """Write each key's overrides into its tenant hash, in one transaction.

    Settings are the truth for the owners TASKWIRE_KEY_LIMITS names: their limit fields are
    exactly the overrides. The other keys from settings get
    their limit fields removed (a removed override is removed), unless the limits were set
    at run time (`python -m service.keys set-limits`, marked `limits_src=runtime`): those
    are kept, as are every other owner's."""
    owners = override_owners(settings)
    known = {owner_id(key_digest(key)) for key in settings.all_api_keys()} | set(owners)
    ordered = sorted(known)
    async with redis.pipeline(transaction=False) as pipe:
        for owner in ordered:
            pipe.hget(keys.tenant(owner), LIMITS_SOURCE)
        sources = dict(zip(ordered, await pipe.execute(), strict=True))
    async with redis.pipeline(transaction=True) as pipe:
        for owner in ordered:
            limits = owners.get(owner)
            runtime = sources[owner] == RUNTIME.encode()
            if limits is None and runtime:
                continue
            if limits is not None and runtime:
                log.warning("limits.runtime_limits_replaced", owner=owner)
            pipe.hdel(keys.tenant(owner), *TENANT_FIELDS.values(), LIMITS_SOURCE)
            values = limits.model_dump(exclude_none=True) if limits is not None else {}
            if values:
                pipe.hset(
                    keys.tenant(owner),
                    mapping={TENANT_FIELDS[name]: _number(v) for name, v in values.items()},
                )
        await pipe.execute()
    log.info("limits.applied", overridden=sorted(owners))
    return len(owners)
