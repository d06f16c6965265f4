"""Tenants: one key's flood must not be felt by another key, and overload is refused fast.

* **Flood.** Key B's sync latency (p50/p99) on an idle stack, then while key A has a
  20,000-task async backlog draining; and A's throughput alone vs with B beside it.
* **Overload.** The stack's sync capacity (closed loop, many clients), then an open-loop
  offer of twice that for a while: how many are accepted, their p99 against the idle p99,
  and how fast the excess is refused (503 serverBusy).

Recipe: one API, one worker, private Redis, the simulator with `ttft` ms to first token;
both keys are plain keys with the default limits (the bench raises the per-key queued and
rate limits so the flood itself is allowed).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.common import median, percentile, table, text_task
from bench.loadgen import LoadGenerator
from core.keys import Keys
from core.scheduler import outstanding
from devenv.stack import Stack

KEY_A = "tw-bench-key"
KEY_B = "tw-bench-key-b"
KEYS = Keys("tw", "tw:queue")
# the flood is one key's legitimate backlog: lift its quotas so only scheduling is measured
TENANT_ENV = {
    "TASKWIRE_KEY_MAX_QUEUED": "1000000",
    "TASKWIRE_MAX_QUEUE_DEPTH": "1000000",
}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Latencies:
    label: str
    ok_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)
    errors: int = 0
    offered: int = 0
    seconds: float = 0.0


async def sync_samples(
    client: httpx.AsyncClient, count: int, ttft_ms: int, gap_s: float, label: str
) -> Latencies:
    """Key B's sync tasks one after another (a person waiting on each)."""
    found = Latencies(label)
    for _ in range(count):
        task = text_task(f"[[sim:ttft={ttft_ms}]] B asks", seed=1)
        started = time.perf_counter()
        response = await client.post("/v1", json=[task], headers=auth(KEY_B))
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code == 200:
            found.ok_ms.append(elapsed)
        else:
            found.errors += 1
        await asyncio.sleep(gap_s)
    return found


async def submit_backlog(client: httpx.AsyncClient, total: int, ttft_ms: int) -> float:
    """Key A's async backlog, submitted in batches of 100; returns when all are accepted."""

    async def batch(start: int) -> None:
        tasks = [
            text_task(f"[[sim:ttft={ttft_ms}]] A {start + i}", deliveryMethod="async")
            for i in range(min(100, total - start))
        ]
        response = await client.post("/v1", json=tasks, headers=auth(KEY_A))
        response.raise_for_status()

    started = time.perf_counter()
    for offset in range(0, total, 2000):
        await asyncio.gather(*(batch(s) for s in range(offset, min(total, offset + 2000), 100)))
    return time.perf_counter() - started


async def drained(stack: Stack) -> None:
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(stack.redis_url)
    try:
        while await outstanding(redis, KEYS) > 0:  # noqa: ASYNC110 (a measuring loop)
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


@dataclass
class FloodRun:
    idle: Latencies
    flooded: Latencies
    alone_per_s: float
    beside_per_s: float
    backlog: int


async def flood(stack: Stack, backlog: int, samples: int, ttft_ms: int = 20) -> FloodRun:
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=120, limits=limits) as client:
        await sync_samples(client, 20, ttft_ms, 0.01, "warm-up")
        idle = await sync_samples(client, samples, ttft_ms, 0.02, "idle")
        # A alone
        started = time.perf_counter()
        await submit_backlog(client, backlog, ttft_ms)
        await drained(stack)
        alone = backlog / (time.perf_counter() - started)
        # A again, with B asking beside it while the backlog drains
        started = time.perf_counter()
        await submit_backlog(client, backlog, ttft_ms)
        flooded = await sync_samples(client, samples, ttft_ms, 0.02, "A's backlog queued")
        await drained(stack)
        beside = backlog / (time.perf_counter() - started)
    return FloodRun(idle, flooded, alone, beside, backlog)


def flood_table(run: FloodRun) -> str:
    rows: list[list[Any]] = []
    for sample in (run.idle, run.flooded):
        rows.append(
            [
                f"key B sync, {sample.label}",
                len(sample.ok_ms),
                median(sample.ok_ms),
                percentile(sample.ok_ms, 99),
                sample.errors,
            ]
        )
    latency = table(["measurement", "n", "p50 ms", "p99 ms", "errors"], rows)
    target = percentile(run.idle.ok_ms, 99) + 20
    verdict = "met" if percentile(run.flooded.ok_ms, 99) <= target else "not met"
    throughput = table(
        ["key A's backlog", "alone tasks/s", "beside B tasks/s", "ratio"],
        [
            [
                f"{run.backlog:,} async tasks",
                run.alone_per_s,
                run.beside_per_s,
                run.beside_per_s / run.alone_per_s,
            ]
        ],
    )
    return (
        f"{latency}\n\nTarget: B's p99 under the flood ≤ idle p99 + 20 ms ({target:.1f} ms): "
        f"**{verdict}**.\n\n{throughput}\n\nTarget: A's throughput beside B within 10% of "
        f"alone: **{'met' if run.beside_per_s >= 0.9 * run.alone_per_s else 'not met'}**."
    )


@dataclass
class OverloadRun:
    idle: Latencies
    capacity_per_s: float
    offered_per_s: float
    load: Latencies


def _sync_request(gen: LoadGenerator, ttft_ms: int, label: str) -> Callable[[int], bytes]:
    def build(n: int) -> bytes:
        body = json.dumps([text_task(f"[[sim:ttft={ttft_ms}]] {label} {n}", seed=n)])
        return gen.post("/v1", body.encode(), auth(KEY_A))

    return build


async def overload(stack: Stack, samples: int, ttft_ms: int = 20) -> OverloadRun:
    limits = httpx.Limits(max_connections=10)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=120, limits=limits) as client:
        await sync_samples(client, 20, ttft_ms, 0.01, "warm-up")
        idle = await sync_samples(client, samples, ttft_ms, 0.02, "idle")
    gen = LoadGenerator(stack.api_url)
    try:
        closed = await gen.closed_loop(128, 8.0, _sync_request(gen, ttft_ms, "capacity"))
        per_s = len(closed.latencies(200)) / closed.seconds
        await drained(stack)
        run = await gen.open_loop(2 * per_s, 10.0, _sync_request(gen, ttft_ms, "overload"))
        await drained(stack)
    finally:
        gen.close()
    load = Latencies("overload", offered=run.offered, seconds=run.seconds)
    load.ok_ms = run.latencies(200)
    load.refused_ms = run.latencies(503)
    load.errors = run.failed + sum(1 for o in run.outcomes if o.status not in (200, 503))
    return OverloadRun(idle, per_s, 2 * per_s, load)


def overload_table(run: OverloadRun) -> str:
    load = run.load
    rows = [
        [
            "idle sync (one client)",
            len(run.idle.ok_ms),
            median(run.idle.ok_ms),
            percentile(run.idle.ok_ms, 99),
        ],
        [
            f"accepted at {run.offered_per_s:,.0f}/s offered",
            len(load.ok_ms),
            median(load.ok_ms),
            percentile(load.ok_ms, 99),
        ],
        [
            "refused (503 serverBusy)",
            len(load.refused_ms),
            median(load.refused_ms),
            percentile(load.refused_ms, 99),
        ],
    ]
    body = table(["requests", "n", "p50 ms", "p99 ms"], rows)
    idle_p99 = percentile(run.idle.ok_ms, 99)
    accepted_ok = percentile(load.ok_ms, 99) <= 2 * idle_p99
    refused_ok = not load.refused_ms or percentile(load.refused_ms, 99) < 50
    return (
        f"Sync capacity (128 clients back to back): {run.capacity_per_s:,.0f}/s; offered "
        f"{run.offered_per_s:,.0f}/s for {load.seconds:g} s ({load.offered:,} requests, "
        f"{load.errors} other errors).\n\n{body}\n\nTarget: accepted p99 ≤ 2 × idle p99 "
        f"({2 * idle_p99:.1f} ms): **{'met' if accepted_ok else 'not met'}**; excess refused "
        f"in under 50 ms: **{'met' if refused_ok and load.refused_ms else 'not met'}**."
    )
