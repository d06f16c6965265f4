"""Load shedding: refuse new interactive work at once when it could not start in time.

An overloaded stack used to accept everything and let latency grow without bound (at twice
its sync capacity, p50 climbed to 24 s). Workers now take only what their event loop can run
(worker/admission.py), so excess interactive work waits in Redis, where this module sees it.

Every `refresh_s` one Lua call reads how many interactive jobs the workers have started (a
counter the claim script keeps) and each key's interactive backlog. A new interactive task
of key K is refused with 503 `serverBusy` when its estimated wait to start is over the
budget: the work ahead of it, which under fair turns is each waiting key's backlog up to
K's own position (a flood from one key does not make another key's single task wait), over
the rate at which workers started interactive work in the last second while work was
waiting (their capacity; before any is measured, a burst on an idle stack is accepted, and
work waiting longer than the budget with nothing started is refused). Batch work is never
shed here: it is meant to wait, up to the queue limits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.errors import ServiceUnavailable
from core.keys import Keys

log = structlog.get_logger("taskwire.shedding")

# ARGV: queue prefix, most tenants to read. Returns interactive jobs started so far, then
# owner, backlog pairs for keys with interactive work waiting (taking turns or parked).
_SNAPSHOT = """
local qp = ARGV[1]
local out = {redis.call('HGET', qp .. 'started', 'i') or '0'}
local owners = redis.call('ZRANGE', qp .. 'tenants:i', 0, tonumber(ARGV[2]) - 1)
for _, o in ipairs(redis.call('SMEMBERS', qp .. 'blocked:r')) do owners[#owners + 1] = o end
for _, o in ipairs(owners) do
  local waiting = redis.call('ZCARD', qp .. 'ready:i:' .. o)
  if waiting > 0 then
    out[#out + 1] = o
    out[#out + 1] = waiting
  end
end
return out
"""

# Below this many jobs ahead a task is never refused (a burst on an idle stack is not load).
MIN_AHEAD = 8


@dataclass
class Snapshot:
    at: float = 0.0
    backlog: dict[str, int] = field(default_factory=dict)
    # interactive jobs started per second while work was waiting (the workers' capacity);
    # 0: not measured (nothing waited in the last second) or nothing started
    rate_per_s: float = 0.0
    # how long interactive work has been waiting without a break (inf: as far as is known)
    backlog_age_s: float = math.inf


class LoadShedder:
    """One per API process: a background refresher and a cheap local check per task."""

    def __init__(self, redis: Redis, keys: Keys, *, budget_s: float, refresh_s: float):
        self.budget_s = budget_s
        self.refresh_s = refresh_s
        self._keys = keys
        self._snapshot_script = redis.register_script(_SNAPSHOT)
        # (time, interactive jobs started so far, interactive jobs waiting) per refresh
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque()
        self._waiting_since: float | None = None
        self.snapshot = Snapshot()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.budget_s > 0

    async def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._run(), name="load-shedder")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                # no fresh view: stop shedding on stale numbers (submit fails fast anyway)
                self.snapshot = Snapshot(at=time.monotonic())
                log.warning("shedding.refresh_failed", error=type(exc).__name__)
            await asyncio.sleep(self.refresh_s)

    async def refresh(self) -> None:
        reply = await self._snapshot_script(args=[self._keys.queue_prefix, 1000])
        now = time.monotonic()
        backlog = {
            owner.decode(): int(count)
            for owner, count in zip(reply[1::2], reply[2::2], strict=True)
        }
        waiting = sum(backlog.values())
        self._samples.append((now, int(reply[0]), waiting))
        while len(self._samples) > 2 and now - self._samples[1][0] >= 1.0:
            self._samples.popleft()
        if waiting == 0:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = now
        age = 0.0 if self._waiting_since is None else now - self._waiting_since
        self.snapshot = Snapshot(now, backlog, self._busy_rate(), age)

    def _busy_rate(self) -> float:
        """Starts per second over the last second's intervals with work waiting at both
        ends (the workers busy throughout): their capacity. Other intervals are left out:
        a worker that was idle for part of one started what arrived, which says how fast
        work came, not how fast it could go; so the first refresh after a burst on a quiet
        stack has no rate yet rather than a tiny one."""
        started = busy = 0.0
        for (t0, s0, w0), (t1, s1, w1) in itertools.pairwise(self._samples):
            if w0 > 0 and w1 > 0:
                started += s1 - s0
                busy += t1 - t0
        return started / busy if busy > 0 else 0.0

    def estimated_wait_s(self, owner: str, new: int = 1) -> float:
        """How long `new` interactive tasks of `owner` would wait to start, by the snapshot."""
        snap = self.snapshot
        position = snap.backlog.get(owner, 0) + new
        ahead = sum(min(count, position) for key, count in snap.backlog.items() if key != owner)
        ahead += position
        if ahead < MIN_AHEAD + new:
            return 0.0
        if snap.rate_per_s <= 0:
            # no measured capacity: work that has waited longer than the budget with no
            # start is refused (no worker takes it); a fresh burst is not load yet (the next
            # refresh measures how fast it goes)
            return math.inf if snap.backlog_age_s >= self.budget_s else 0.0
        return ahead / snap.rate_per_s

    def check(self, owner: str, new: int = 1) -> None:
        """Raise 503 serverBusy if these interactive tasks could not start within budget."""
        if not self.enabled:
            return
        wait = self.estimated_wait_s(owner, new)
        if wait > self.budget_s:
            retry = 5 if math.isinf(wait) else max(1, math.ceil(wait - self.budget_s))
            raise ServiceUnavailable(
                "The server is too busy to start this interactive task in time "
                f"(estimated wait over {self.budget_s:g} s); retry shortly, or submit it "
                'with deliveryMethod "async" to have it queued.',
                code="serverBusy",
                retry_after=retry,
            )
