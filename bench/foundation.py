"""Sync latency through taskwire vs straight to the simulator, enqueue-to-start, and async
throughput: the foundation's benchmarks."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import redis.asyncio as aioredis

from bench.common import (
    API_KEY,
    SIM_KEY,
    direct_body,
    log_events,
    log_time,
    median,
    percentile,
    table,
    text_task,
)
from core.keys import Keys
from core.scheduler import outstanding
from devenv.stack import Stack

KEYS = Keys("tw", "tw:queue")


async def logged(
    stack: Stack, event: str, task_uuids: set[str], count: int, within_s: float = 10
) -> list[dict[str, Any]]:
    """The workers' `event` log lines for these tasks, once `count` of them are written."""
    deadline = time.monotonic() + within_s
    while True:
        lines = [
            line
            for worker in stack.workers
            for line in log_events(worker.log_path, event)
            if line.get("task_uuid") in task_uuids
        ]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.1)


async def _direct_call(client: httpx.AsyncClient, stack: Stack, prompt: str, seed: int) -> float:
    started = time.perf_counter()
    async with client.stream(
        "POST",
        f"{stack.sim_url}/v1/chat/completions",
        json=direct_body(prompt, seed),
        headers={"Authorization": f"Bearer {SIM_KEY}"},
    ) as response:
        response.raise_for_status()
        async for _line in response.aiter_lines():
            pass
    return time.perf_counter() - started


async def _sync_call(
    client: httpx.AsyncClient, stack: Stack, prompt: str, seed: int, uuids: list[str]
) -> float:
    task = text_task(prompt, seed=seed)
    uuids.append(task["taskUUID"])
    started = time.perf_counter()
    response = await client.post(
        f"{stack.api_url}/v1", json=[task], headers={"Authorization": f"Bearer {API_KEY}"}
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or response.json()["data"][0]["status"] != "success":
        raise RuntimeError(f"sync task failed: {response.status_code} {response.text[:300]}")
    return elapsed


async def sync_latency(
    stack: Stack, ttft_ms: int, samples: int, warmup: int = 30
) -> dict[str, Any]:
    """Interleaved pairs: the same request straight to the simulator and through taskwire."""
    prompt = f"bench sync {uuid.uuid4().hex[:8]}" + (f" [[sim:ttft={ttft_ms}]]" if ttft_ms else "")
    direct: list[float] = []
    through: list[float] = []
    uuids: list[str] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(warmup + samples):
            # alternate which path goes first, so neither always runs on a warmer machine
            if i % 2:
                d = await _direct_call(client, stack, prompt, i)
                t = await _sync_call(client, stack, prompt, i, uuids)
            else:
                t = await _sync_call(client, stack, prompt, i, uuids)
                d = await _direct_call(client, stack, prompt, i)
            if i >= warmup:
                direct.append(d * 1000)
                through.append(t * 1000)
    measured = set(uuids[warmup:])
    # the worker logs a result just after publishing it
    lines = await logged(stack, "result.finished", measured, len(measured))
    queue = [line["queue_ms"] for line in lines]
    return {
        "ttft_ms": ttft_ms,
        "samples": samples,
        "direct": direct,
        "through": through,
        "queue_ms": queue,
    }


async def async_throughput(
    stack: Stack, total: int, batch: int = 50, concurrency: int = 4
) -> dict[str, Any]:
    """Submit `total` async tasks in batches and time until the last result is recorded."""
    prompt = f"bench async {uuid.uuid4().hex[:8]}"
    tasks = [text_task(prompt, deliveryMethod="async", seed=i) for i in range(total)]
    wanted = {task["taskUUID"] for task in tasks}
    redis = aioredis.Redis.from_url(stack.redis_url)
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120) as client:

        async def submit(chunk: list[dict[str, Any]]) -> None:
            async with limit:
                response = await client.post(
                    f"{stack.api_url}/v1",
                    json=chunk,
                    headers={"Authorization": f"Bearer {API_KEY}"},
                )
                if response.status_code != 200:
                    raise RuntimeError(f"submit failed: {response.status_code} {response.text}")

        started = time.time()
        await asyncio.gather(*(submit(tasks[i : i + batch]) for i in range(0, total, batch)))
        submitted = time.time()
        # The queue holds a job until it finishes: empty queue, all done.
        while await outstanding(redis, KEYS) > 0:  # noqa: ASYNC110 (a measuring loop)
            await asyncio.sleep(0.05)
    await redis.aclose()
    finished = await logged(stack, "task.finished", wanted, total)
    if len(finished) != total:
        raise RuntimeError(f"only {len(finished)} of {total} tasks finished")
    failures = sum(1 for line in finished if line["status"] != "success")
    last = max(log_time(line) for line in finished)
    return {
        "total": total,
        "seconds": last - started,
        "submit_seconds": submitted - started,
        "rate": total / (last - started),
        "failures": failures,
    }


async def direct_throughput(stack: Stack, total: int, concurrency: int = 64) -> dict[str, Any]:
    """The same number of calls straight to the simulator from one client process."""
    prompt = f"bench direct {uuid.uuid4().hex[:8]}"
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        timeout=120, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def one(i: int) -> None:
            async with limit:
                await _direct_call(client, stack, prompt, i)

        started = time.time()
        await asyncio.gather(*(one(i) for i in range(total)))
        seconds = time.time() - started
    return {"total": total, "seconds": seconds, "rate": total / seconds}


def latency_table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        d, t = run["direct"], run["through"]
        rows.append(
            [
                f"{run['ttft_ms']} ms",
                run["samples"],
                median(d),
                percentile(d, 99),
                median(t),
                percentile(t, 99),
                median(t) - median(d),
                median(t) / median(d),
            ]
        )
    return table(
        [
            "simulator TTFT",
            "pairs",
            "direct median ms",
            "direct p99 ms",
            "taskwire median ms",
            "taskwire p99 ms",
            "added median ms",
            "ratio",
        ],
        rows,
    )


def queue_table(runs: list[dict[str, Any]]) -> str:
    queue = [q for run in runs for q in run["queue_ms"]]
    return table(
        ["enqueue-to-start", "jobs", "median ms", "p90 ms", "p99 ms"],
        [
            [
                "API accept -> job running",
                len(queue),
                median(queue),
                percentile(queue, 90),
                percentile(queue, 99),
            ]
        ],
    )


def throughput_table(runs: dict[int, dict[str, Any]], direct_run: dict[str, Any]) -> str:
    rows: list[list[Any]] = [
        [
            f"taskwire async, {workers} worker process{'es' if workers > 1 else ''}",
            run["total"],
            run["seconds"],
            run["rate"],
            run["failures"],
        ]
        for workers, run in runs.items()
    ]
    rows.append(
        [
            "direct to simulator, 1 client process, 64 concurrent",
            direct_run["total"],
            direct_run["seconds"],
            direct_run["rate"],
            0,
        ]
    )
    return table(
        [
            "path (taskwire: batches of 50 tasks, 4 submitters)",
            "tasks",
            "seconds",
            "tasks/s",
            "failures",
        ],
        rows,
    )
