"""Prometheus metrics shared by every process: bounded label values, and the queue's depth,
exported by exactly one process at a time.

Every taskwire process keeps its own registry (prometheus_client's default one) and is
scraped on its own: the API on `GET /metrics` (service/metrics.py), each worker on its
probe port (worker/metrics.py). Counters and histograms are per process, so `sum()` over
the processes is the fleet's total. uvicorn runs one process per API here (`python -m
service`); several API processes on a host are several targets, each with its own registry
(prometheus_client's multiprocess mode is not needed, and not used).

**The queue's depth** lives in Redis, shared by everybody: if every API process exported it,
`sum(taskwire_queue_waiting)` would count it once per process. So one process exports it:
the holder of a short Redis lock (`<prefix>:metrics:queue-exporter`), renewed by a
background task every third of its TTL, which reads the depth from Redis when scraped (one
round trip per scrape, none per request). A process that loses the lock (it died, or lost
Redis for a TTL) stops exporting at once. A process that takes the lock waits
`handover_s` (at least the scrape interval) before exporting: by then Prometheus has
scraped the previous holder without the series (or failed to scrape it), marked them stale,
and two processes' samples are never live together in one `sum()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.keys import Keys

log = structlog.get_logger("taskwire.metrics")

# The scheduler's job classes as labels (core/scheduler.py: i, b, h).
CLASS_NAMES = {"i": "interactive", "b": "batch", "h": "webhook"}

# The queue series, exported only by the lock holder (see the module's docstring).
QUEUE_WAITING = "taskwire_queue_waiting"
QUEUE_SCHEDULED = "taskwire_queue_scheduled"
QUEUE_LEASED = "taskwire_queue_leased"
QUEUE_METRICS = (QUEUE_WAITING, QUEUE_SCHEDULED, QUEUE_LEASED)

OTHER = "other"
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.:@/+-]{1,80}$")


class BoundedLabel:
    """Label values from a set that is small but not closed (error codes, task types as
    clients spell them): values are kept as they are up to `limit` distinct ones, and any
    value after that, or one that does not look like an identifier, is `other`. Keeps a
    client from minting a new series per request."""

    def __init__(self, limit: int = 100, allowed: frozenset[str] | None = None):
        self.limit = limit
        self.allowed = allowed
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        if value is None or value == "":
            return ""
        text = str(value)
        if text in self._seen:
            return text
        if self.allowed is not None:
            return text if text in self.allowed else OTHER
        if not _LABEL_VALUE.match(text):
            return OTHER
        with self._lock:
            if len(self._seen) >= self.limit:
                return OTHER
            self._seen.add(text)
        return text


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """The queue at one moment: jobs due and not claimed by class, delayed, leased."""

    waiting: dict[str, int]
    scheduled: int
    leased: int

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = GaugeMetricFamily(
            QUEUE_WAITING,
            "Jobs due and not yet claimed, by class (interactive: sync and stream results; "
            "batch: async results; webhook: deliveries). Exported by one process only.",
            labels=["class"],
        )
        for code, name in CLASS_NAMES.items():
            waiting.add_metric([name], max(0, self.waiting.get(code, 0)))
        yield waiting
        yield GaugeMetricFamily(
            QUEUE_SCHEDULED,
            "Jobs scheduled for later (webhook back-off, delayed hand-backs), all classes.",
            value=self.scheduled,
        )
        yield GaugeMetricFamily(
            QUEUE_LEASED,
            "Jobs claimed and leased by a worker (running, or a dead worker's until the "
            "lease lapses), all classes.",
            value=self.leased,
        )

    def exposition(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(self))
        return generate_latest(registry)


class _Snapshot(Collector):
    def __init__(self, snapshot: QueueSnapshot):
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return self.snapshot.collect()


async def read_queue(redis: Redis, keys: Keys) -> QueueSnapshot:
    """The queue's depth in one round trip (O(1) reads: the `depth` hash of three fields
    kept by the scheduler's scripts, and the cardinality of `delayed` and `leases`)."""
    prefix = keys.queue_prefix
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(prefix + "depth")
        pipe.zcard(prefix + "delayed")
        pipe.zcard(prefix + "leases")
        depth, delayed, leased = await pipe.execute()
    waiting = {key.decode(): int(value) for key, value in depth.items()}
    return QueueSnapshot(waiting, int(delayed), int(leased))


# KEYS[1] the lock; ARGV: this process's token, TTL ms. 1: renewed, 2: taken now, 0: held by
# another process.
_HOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

EXPORTER_FLAG = Gauge(
    "taskwire_metrics_queue_exporter",
    "1 in the one process exporting the taskwire_queue_* series, 0 elsewhere "
    "(sum over processes should be 1).",
)


class QueueExporter:
    """Decides whether this process exports the queue series (the lock), and reads them."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        ttl_s: float,
        handover_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.redis = redis
        self.keys = keys
        self.key = f"{keys.prefix}:metrics:queue-exporter"
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl_s = ttl_s
        self.handover_s = handover_s
        self.clock = clock
        self._held_since: float | None = None
        self._valid_until = 0.0
        self._hold = redis.register_script(_HOLD)
        self._release = redis.register_script(_RELEASE)
        self._task: asyncio.Task[None] | None = None

    def exporting(self) -> bool:
        since = self._held_since
        now = self.clock()
        return since is not None and now < self._valid_until and now - since >= self.handover_s

    async def renew(self) -> None:
        """Take or keep the lock (best-effort: on a Redis error the lock is simply not
        renewed, and this process stops exporting when it would have lapsed)."""
        sent = self.clock()
        try:
            held = int(await self._hold(keys=[self.key], args=[self.token, int(self.ttl_s * 1000)]))
        except (RedisError, OSError) as exc:
            log.warning("metrics.queue_lock_failed", error=type(exc).__name__)
            return
        if held == 0:
            self._held_since = None
            return
        if held == 2 or self._held_since is None:
            self._held_since = sent
            log.info("metrics.queue_exporter", handover_s=self.handover_s)
        self._valid_until = sent + self.ttl_s

    async def run(self) -> None:
        while True:
            await self.renew()
            await asyncio.sleep(self.ttl_s / 3)

    async def start(self) -> None:
        await self.renew()
        self._task = asyncio.create_task(self.run(), name="metrics-queue-lock")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._held_since is not None:
            self._held_since = None
            with contextlib.suppress(RedisError, OSError):
                await self._release(keys=[self.key], args=[self.token])
        EXPORTER_FLAG.set(0)

    async def exposition(self) -> bytes:
        """The queue series if this process exports them now, else nothing."""
        exporting = self.exporting()
        EXPORTER_FLAG.set(1 if exporting else 0)
        if not exporting:
            return b""
        try:
            snapshot = await read_queue(self.redis, self.keys)
        except (RedisError, OSError) as exc:
            log.warning("metrics.queue_unreadable", error=type(exc).__name__)
            return b""
        return snapshot.exposition()


def scrape_allowed(token: SecretStr | None, authorization: str | None) -> bool:
    """Whether a scrape with this `Authorization` header may read /metrics: always when no
    metrics token is configured, else only with `Bearer <token>` (compared in constant
    time, as digests, so neither length nor content leaks)."""
    if token is None:
        return True
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    expected = hashlib.sha256(token.get_secret_value().encode()).digest()
    return hmac.compare_digest(hashlib.sha256(presented.strip().encode()).digest(), expected)
