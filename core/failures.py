"""Failed results, remembered briefly for the operator console: counts by error code per
clock minute, and the latest few failures with what they were.

Written by the worker once a failed result is recorded (one pipelined round trip, only for
errors, best-effort: a failure here never costs the result), read by the console
(service/console.py). Both structures are small and capped: a hash per minute holding one
field per error code, kept `KEEP_MINUTES`; a list of the latest `KEEP_RECENT` failures.
Results a client cancelled are not failures and are not counted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.contract import ErrorItem, ResultItem
from core.errors import TASK_CANCELLED
from core.keys import Keys, TaskRef

if TYPE_CHECKING:
    from core.store import TaskStore

log = structlog.get_logger("taskwire.failures")

KEEP_MINUTES = 60
KEEP_RECENT = 100
MESSAGE_CHARS = 300


@dataclass(frozen=True, slots=True)
class FailureCounts:
    """Failed results by error code: in the last `window` minutes, and the last five."""

    window_minutes: int
    by_code: dict[str, int]
    last_5_minutes: dict[str, int]


class FailureLog:
    def __init__(self, redis: Redis, keys: Keys):
        self._redis = redis
        self._keys = keys

    async def record(
        self, ref: TaskRef, model: str, route: str | None, item: ResultItem, now: float
    ) -> None:
        """Count a recorded failed result and keep it among the latest (not cancellations)."""
        if not isinstance(item, ErrorItem) or item.code == TASK_CANCELLED:
            return
        entry = {
            "at": round(now, 3),
            "code": item.code,
            "model": model,
            "route": route,
            "owner": ref.owner,
            "taskUUID": ref.uuid,
            "resultIndex": item.index,
            "message": item.message[:MESSAGE_CHARS],
        }
        minute_key = self._keys.failure_counts(int(now // 60))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(minute_key, item.code, 1)
            pipe.expire(minute_key, (KEEP_MINUTES + 1) * 60)
            pipe.lpush(self._keys.recent_failures, json.dumps(entry, separators=(",", ":")))
            pipe.ltrim(self._keys.recent_failures, 0, KEEP_RECENT - 1)
            await pipe.execute()

    async def counts(self, now: float, minutes: int = KEEP_MINUTES) -> FailureCounts:
        """Failures by code over the last `minutes` clock minutes (this one included)."""
        minutes = max(1, min(minutes, KEEP_MINUTES))
        current = int(now // 60)
        async with self._redis.pipeline(transaction=False) as pipe:
            for minute in range(current, current - minutes, -1):
                pipe.hgetall(self._keys.failure_counts(minute))
            buckets: list[dict[bytes, bytes]] = await pipe.execute()
        total: dict[str, int] = {}
        recent: dict[str, int] = {}
        for age, bucket in enumerate(buckets):
            for code, count in bucket.items():
                name = code.decode()
                total[name] = total.get(name, 0) + int(count)
                if age < 5:
                    recent[name] = recent.get(name, 0) + int(count)
        return FailureCounts(minutes, total, recent)

    async def recent(self, limit: int = KEEP_RECENT) -> list[dict[str, Any]]:
        """The latest failures, newest first."""
        raw: list[bytes] = await self._redis.lrange(  # type: ignore[misc]
            self._keys.recent_failures, 0, max(0, min(limit, KEEP_RECENT) - 1)
        )
        found = []
        for value in raw:
            try:
                found.append(json.loads(value))
            except ValueError:
                continue
        return found


async def note_failure(
    store: TaskStore, ref: TaskRef, model: str, route: str | None, item: ResultItem
) -> None:
    """The worker's hook, once a result is recorded: remember it for the console if it
    failed (best-effort)."""
    if not isinstance(item, ErrorItem):
        return
    try:
        await FailureLog(store.redis, store.keys).record(ref, model, route, item, time.time())
    except (RedisError, OSError) as exc:
        log.warning("failures.not_recorded", error=type(exc).__name__)
