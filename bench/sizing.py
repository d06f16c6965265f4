"""Sizing: what one task costs Redis (commands, bytes in and out, by delivery method), what
an idle deployment costs it, and async throughput with 1, 2 and 4 worker processes.

Commands are Redis's own count (`INFO commandstats`: every command, those run inside Lua
scripts included, as the issue that set the target counted them) over a burst of tasks,
minus the benchmark's own reads, divided by the tasks; bytes are `INFO stats`'
total_net_input_bytes / total_net_output_bytes (what crossed the wire, both ways). The
idle rate (commands per second with nothing to do: claim polls, shedder snapshots, lock
renewals) is measured first and subtracted for the burst's duration, and reported on its
own. The benchmark sends its tasks over HTTP and waits for them from the side: the worker's
log lines for sync, async and webhook tasks, the SSE stream for stream tasks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from bench.common import API_KEY, start_stack, table, text_task
from bench.foundation import async_throughput, logged
from bench.webhooks import WEBHOOK_ENV, LeanReceiver
from devenv.stack import Stack

PER_KIND = 400
CONCURRENCY = 16


@dataclass
class Cost:
    kind: str
    tasks: int
    seconds: float
    commands: float  # per task
    bytes_in: float  # per task, client -> Redis
    bytes_out: float  # per task, Redis -> clients
    top: list[tuple[str, float]]  # the largest commands, per task


def _counters(client: redis.Redis) -> tuple[dict[str, int], int, int]:
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    net = client.info("stats")
    return calls, int(net["total_net_input_bytes"]), int(net["total_net_output_bytes"])


async def idle_rate(stack: Stack, seconds: float = 5.0) -> float:
    """Commands per second Redis runs while the deployment has nothing to do."""
    client = stack.redis_client()
    await asyncio.sleep(1.0)
    calls0, _, _ = await asyncio.to_thread(_counters, client)
    await asyncio.sleep(seconds)
    calls1, _, _ = await asyncio.to_thread(_counters, client)
    # the two INFO reads themselves: 2 commands (counted in the second)
    return (sum(calls1.values()) - sum(calls0.values()) - 2) / seconds


async def _burst(stack: Stack, kind: str, count: int, receiver: LeanReceiver | None) -> None:
    label = uuid.uuid4().hex[:8]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limit = asyncio.Semaphore(CONCURRENCY)
    uuids: set[str] = set()
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=120) as http:

        async def one(n: int) -> None:
            fields: dict[str, Any] = {"seed": n}
            if kind == "webhook":
                assert receiver is not None
                fields.update(deliveryMethod="async", webhookURL=receiver.url())
            else:
                fields["deliveryMethod"] = kind
            task = text_task(f"sizing {kind} {label} [[sim:tokens=8]]", **fields)
            uuids.add(task["taskUUID"])
            async with limit:
                if kind == "stream":
                    async with http.stream("POST", "/v1", json=[task], headers=headers) as sse:
                        async for _ in sse.aiter_bytes():
                            pass
                    return
                answer = await http.post("/v1", json=[task], headers=headers)
                if answer.status_code != 200:
                    raise RuntimeError(f"{kind}: {answer.status_code} {answer.text[:200]}")

        await asyncio.gather(*(one(n) for n in range(count)))
    if kind in ("sync", "async"):
        lines = await logged(stack, "task.finished", uuids, count, within_s=120)
        if len(lines) < count:
            raise RuntimeError(f"{kind}: only {len(lines)} of {count} finished")
    if receiver is not None:
        await receiver.wait_count(count, 120)


async def cost(stack: Stack, kind: str, idle_per_s: float, receiver: LeanReceiver | None) -> Cost:
    client = stack.redis_client()
    await _burst(stack, kind, 20, receiver)  # warm-up: scripts loaded, connections open
    if receiver is not None:
        receiver.count = 0
    await asyncio.sleep(0.5)
    calls0, in0, out0 = await asyncio.to_thread(_counters, client)
    started = time.monotonic()
    await _burst(stack, kind, PER_KIND, receiver)
    await asyncio.sleep(0.5)  # the last settles land
    seconds = time.monotonic() - started
    calls1, in1, out1 = await asyncio.to_thread(_counters, client)
    if receiver is not None:
        receiver.count = 0
    diff = {name: calls1.get(name, 0) - calls0.get(name, 0) for name in calls1}
    total = sum(diff.values()) - 2 - idle_per_s * seconds  # the INFO pair, the idle polls
    top = sorted(((n, c / PER_KIND) for n, c in diff.items() if c > 0), key=lambda x: -x[1])
    return Cost(
        kind,
        PER_KIND,
        seconds,
        total / PER_KIND,
        (in1 - in0) / PER_KIND,
        (out1 - out0) / PER_KIND,
        top[:6],
    )


async def redis_costs() -> tuple[float, list[Cost]]:
    stack = start_stack(workers=1, env=WEBHOOK_ENV)
    receiver = LeanReceiver()
    await receiver.start()
    try:
        idle = await idle_rate(stack)
        costs = []
        for kind in ("sync", "async", "stream", "webhook"):
            print(f"  redis cost per {kind} task ...", flush=True)
            costs.append(await cost(stack, kind, idle, receiver if kind == "webhook" else None))
        return idle, costs
    finally:
        await receiver.stop()
        stack.stop()


async def worker_scaling(total: int) -> dict[int, dict[str, Any]]:
    runs = {}
    for workers in (1, 2, 4):
        print(f"  async throughput, {workers} worker(s) ...", flush=True)
        stack = start_stack(workers=workers)
        try:
            runs[workers] = await async_throughput(stack, total)
        finally:
            stack.stop()
    return runs


def costs_table(idle: float, costs: list[Cost]) -> str:
    rows = [
        [
            c.kind,
            c.tasks,
            c.commands,
            c.bytes_in,
            c.bytes_out,
            ", ".join(f"{name} {per:.1f}" for name, per in c.top),
        ]
        for c in costs
    ]
    body = table(
        [
            "task",
            "tasks",
            "Redis commands/task",
            "bytes in/task",
            "bytes out/task",
            "largest (per task, idle polls included)",
        ],
        rows,
    )
    return (
        f"One API process, one worker; {PER_KIND} tasks per kind, {CONCURRENCY} at a time; "
        f"8 tokens each. Idle deployment: {idle:.1f} Redis commands/s (subtracted above).\n\n"
        f"{body}"
    )


def scaling_table(runs: dict[int, dict[str, Any]]) -> str:
    one = runs[1]["rate"]
    rows = [
        [workers, run["total"], run["rate"], run["rate"] / one, run["failures"]]
        for workers, run in runs.items()
    ]
    return table(["worker processes", "async tasks", "results/s", "vs one", "failures"], rows)
