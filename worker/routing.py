"""Which route a result goes to: policy order, and route health shared by all workers.

A route that fails `threshold` results in a row (each after its retries; counted across
every worker, in Redis) rests for `cooldown_s`: no worker sends it traffic until then, even
when it is a model's only route (results then fail fast instead of piling onto a broken
provider). A success resets the count. Reads are cached for half a second so a busy worker
does not pay a round trip per result for them.

Health is bookkeeping, never a reason to lose an answer: every read and write is
best-effort with a short deadline. When Redis cannot be reached a read falls back to the
last state known here (or to no cool-downs at all), and a lost write is logged and dropped.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.catalog import ModelSpec, Route
from core.errors import UpstreamError
from core.keys import Keys
from worker import metrics as worker_metrics

log = structlog.get_logger("taskwire.routing")

# What a health read or write may fail with: storage trouble, or its deadline.
_STORAGE_ERRORS = (RedisError, OSError, TimeoutError)

# KEYS[1] a model's route health (one hash: "<route>:fails", "<route>:until").
# ARGV: route, now s, threshold, cool-down s. Counts a failure; at the threshold starts a
# cool-down (and resets the count). Returns the cool-down's end, or 0.
_FAILED = """
local fails = redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':fails', 1)
redis.call('EXPIRE', KEYS[1], 86400)
if fails >= tonumber(ARGV[3]) then
  local until_ = tonumber(ARGV[2]) + tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], ARGV[1] .. ':fails', 0, ARGV[1] .. ':until', until_)
  return tostring(until_)
end
return '0'
"""


def counts_against_route(exc: UpstreamError) -> bool:
    """Failures that say something about the route (not about this one request)."""
    return exc.retryable or exc.http_status not in (400, 413, 422)


class RouteHealth:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        threshold: int,
        cooldown_s: float,
        cache_s: float = 0.5,
        deadline_s: float = 1.0,
    ):
        self._redis = redis
        self._keys = keys
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._cache_s = cache_s
        self._deadline_s = deadline_s
        self._cache: dict[str, tuple[float, dict[str, tuple[int, float]]]] = {}
        self._failed = redis.register_script(_FAILED)

    async def states(self, model: ModelSpec) -> dict[str, tuple[int, float]]:
        """route name -> (consecutive failures, cool-down end epoch s). If Redis cannot be
        read: the last state known here, else no failures and no cool-downs."""
        cached = self._cache.get(model.air)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        try:
            async with asyncio.timeout(self._deadline_s):
                raw = await self._redis.hgetall(self._keys.route_health(model.air))  # type: ignore[misc]
        except _STORAGE_ERRORS as exc:
            log.warning("route.health_unreadable", model=model.air, error=type(exc).__name__)
            known = cached[1] if cached is not None else {}
            self._cache[model.air] = (now, known)  # do not ask a failing Redis per result
            return known
        fields = {key.decode(): value for key, value in raw.items()}
        states = {
            route.name: (
                int(fields.get(f"{route.name}:fails", 0)),
                float(fields.get(f"{route.name}:until", 0)),
            )
            for route in model.routes
        }
        self._cache[model.air] = (now, states)
        return states

    async def cooling(self, model: ModelSpec) -> dict[str, float]:
        """Routes resting now, with when they come back."""
        now = time.time()
        return {
            name: until for name, (_, until) in (await self.states(model)).items() if until > now
        }

    async def failed(self, model: ModelSpec, route: Route) -> float | None:
        """Count a failure; the cool-down's end if this one started it (best-effort)."""
        try:
            async with asyncio.timeout(self._deadline_s):
                until = float(
                    await self._failed(
                        keys=[self._keys.route_health(model.air)],
                        args=[route.name, time.time(), self._threshold, self._cooldown_s],
                    )
                )
        except _STORAGE_ERRORS as exc:
            log.warning(
                "route.health_not_recorded",
                model=model.air,
                route=route.name,
                outcome="failure",
                error=type(exc).__name__,
            )
            return None
        self._cache.pop(model.air, None)
        if until:
            worker_metrics.cooldown(model.air, route.name)
            log.warning(
                "route.cooling_down",
                model=model.air,
                route=route.name,
                failures=self._threshold,
                seconds=self._cooldown_s,
            )
            return until
        return None

    async def succeeded(self, model: ModelSpec, route: Route) -> None:
        """Reset the route's failure count (best-effort)."""
        states = await self.states(model)
        if states.get(route.name, (0, 0.0))[0] == 0:
            return
        key = self._keys.route_health(model.air)
        try:
            async with asyncio.timeout(self._deadline_s):
                await self._redis.hset(key, f"{route.name}:fails", "0")  # type: ignore[misc]
        except _STORAGE_ERRORS as exc:
            log.warning(
                "route.health_not_recorded",
                model=model.air,
                route=route.name,
                outcome="success",
                error=type(exc).__name__,
            )
            return
        self._cache.pop(model.air, None)


def order_routes(
    model: ModelSpec, usable: Sequence[tuple[Route, str]], rng: random.Random | None = None
) -> list[tuple[Route, str]]:
    """Routes in the model's policy order. Cheapest-first sorts by the routes' own prices;
    routes of equal price are shuffled by weight, so traffic spreads between them."""
    if model.routing == "ordered":
        return list(usable)
    chooser = rng or random.Random()
    keyed = [
        (route.cost_rank(), -(chooser.random() ** (1 / route.weight)), route, key)
        for route, key in usable
    ]
    return [(route, key) for _, _, route, key in sorted(keyed, key=lambda k: (k[0], k[1]))]
