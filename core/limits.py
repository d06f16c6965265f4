"""Per-key limits held in Redis, so they bind every API and worker process at once.

Each limit is a few lines of Lua over keys every process shares, with the time taken from
Redis (`TIME`), never from a process's clock:

* **Request rate**: a token bucket per key (`rps` tokens a second, holding up to `burst`).
  A new textInference task takes one token *inside the submit script* (no extra round
  trip; a refused, invalid or re-sent task takes none), so 100 tasks in one POST cost 100.
  getResponse and imageUpload tasks take tokens of a second bucket (`read_rps`,
  `read_burst`), one call per request, so polling never eats into the budget for new work.
* **Upstream tokens per minute**: workers add each result's usage (prompt + completion
  tokens) to the key's counter for the current clock minute (fixed windows, aligned to the
  minute), in the script that records the result (so only a recorded result counts, and
  once); the submit script refuses new work of a key whose current minute is spent, until
  the minute ends. Usage is known only when a result finishes, so work already accepted
  may overshoot: the limit stops new work, it does not cut running results short.
* Results running at once (`max_r`), deliveries at once (`max_h`) and results queued
  (`max_queued`) are held by the scheduler and the submit script (core/scheduler.py,
  core/store.py).

Limits are read from the key's tenant hash (`tw:tenant:<owner>`), falling back to the
defaults from settings; 0 means unlimited for the rate and token limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from core.keys import Keys

# The tenant hash's field for each per-key setting (the key's override of `key_<name>`).
TENANT_FIELDS = {
    "weight": "weight",
    "max_running": "max_r",
    "max_deliveries": "max_h",
    "max_queued": "max_queued",
    "rps": "rps",
    "burst": "burst",
    "read_rps": "read_rps",
    "read_burst": "read_burst",
    "tokens_per_minute": "tpm",
}

# Shared by the submit script and the scripts below.
LIMITS_LIB = """
local function redis_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A token bucket: `rate` tokens a second, holding up to `burst` (under 1: one second's
-- worth). Returns 0 when `cost` tokens are there (and takes them if `take`), else the ms
-- until they will be. A rate of 0 or less is no limit.
local function bucket(key, rate, burst, cost, now, take)
  if rate <= 0 then return 0 end
  if burst < 1 then burst = math.max(rate, 1) end
  cost = math.min(cost, burst)
  local state = redis.call('HMGET', key, 't', 'ts')
  local tokens = burst
  if state[1] then
    local elapsed = math.max(now - tonumber(state[2]), 0)
    tokens = math.min(burst, tonumber(state[1]) + elapsed * rate / 1000)
  end
  if tokens < cost then return math.max(math.ceil((cost - tokens) * 1000 / rate), 1) end
  if take then
    redis.call('HSET', key, 't', tostring(tokens - cost), 'ts', now)
    redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
  end
  return 0
end

-- The key's token counter for the current minute, and the ms until that minute ends.
local function usage_window(prefix, owner, now)
  local minute = math.floor(now / 60000)
  return prefix .. owner .. ':' .. minute, (minute + 1) * 60000 - now
end

-- Adds `tokens` to the key's current minute; its total after.
local function record_usage(prefix, owner, tokens)
  local key = usage_window(prefix, owner, redis_now_ms())
  local total = redis.call('INCRBY', key, tokens)
  redis.call('PEXPIRE', key, 120000)
  return total
end

-- 0 when the key may start new work, else the ms until its spent minute ends.
local function tokens_spent(prefix, owner, limit, now)
  if limit <= 0 then return 0 end
  local key, left = usage_window(prefix, owner, now)
  if tonumber(redis.call('GET', key) or '0') >= limit then return math.max(left, 1) end
  return 0
end
"""

# KEYS: the bucket, the tenant hash. ARGV: cost, default rate, default burst, and the tenant
# fields holding this bucket's rate and burst. Returns 0 (taken) or the ms to wait, and the
# rate that applied.
_TAKE = (
    LIMITS_LIB
    + """
local own = redis.call('HMGET', KEYS[2], ARGV[4], ARGV[5])
local rate = tonumber(own[1] or ARGV[2])
local burst = tonumber(own[2] or ARGV[3])
return {bucket(KEYS[1], rate, burst, tonumber(ARGV[1]), redis_now_ms(), true), tostring(rate)}
"""
)

# ARGV: usage prefix, owner, tokens. Adds them to the key's current minute. (A worker adds a
# result's usage in the script that records the result: core/store.py's finish.)
_RECORD_USAGE = (
    LIMITS_LIB
    + """
return record_usage(ARGV[1], ARGV[2], ARGV[3])
"""
)

LimitKind = Literal["rate", "read_rate", "tokens", "queued"]


@dataclass(frozen=True, slots=True)
class LimitHit:
    """A limit refused some work: which, its value, and when trying again can succeed."""

    kind: LimitKind
    limit: float
    retry_after_s: float


@dataclass(frozen=True, slots=True)
class BucketDefaults:
    rate: float = 0.0  # tokens a second; 0: unlimited
    burst: float = 0.0  # bucket size; under 1: one second's worth


UNLIMITED = BucketDefaults()


class ReadBucket:
    """The bucket getResponse and imageUpload tasks draw on (one call per request)."""

    def __init__(self, redis: Redis, keys: Keys, defaults: BucketDefaults):
        self.keys = keys
        self.defaults = defaults
        self._take = redis.register_script(_TAKE)

    async def take(self, owner: str, cost: int) -> LimitHit | None:
        """Take `cost` tokens (at most a full bucket); the hit if the bucket is short."""
        wait_ms, rate = await self._take(
            keys=[self.keys.rate_bucket(owner, "read"), self.keys.tenant(owner)],
            args=[
                cost,
                self.defaults.rate,
                self.defaults.burst,
                TENANT_FIELDS["read_rps"],
                TENANT_FIELDS["read_burst"],
            ],
        )
        if int(wait_ms) == 0:
            return None
        return LimitHit("read_rate", float(rate), int(wait_ms) / 1000)


class UsageMeter:
    """Adds finished results' upstream tokens to their key's current minute."""

    def __init__(self, redis: Redis, keys: Keys):
        self.keys = keys
        self._record = redis.register_script(_RECORD_USAGE)

    async def record(self, owner: str, tokens: int) -> int:
        """The key's total for this minute after adding `tokens`."""
        if tokens <= 0:
            return 0
        total = await self._record(args=[self.keys.usage_prefix, owner, tokens])
        return int(total)
