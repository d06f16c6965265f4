"""Streaming benchmarks: time to first token through taskwire vs straight from the simulator,
added latency per chunk, Redis commands per 1,000 streamed tokens, and how many open
streams one API process holds (with memory per stream)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from bench.common import API_KEY, SIM_KEY, direct_body, median, percentile, table, text_task
from core.keys import Keys
from core.scheduler import outstanding
from devenv.stack import Stack

AUTH = {"Authorization": f"Bearer {API_KEY}"}

KEYS = Keys("tw", "tw:queue")


async def _direct_stream(
    client: httpx.AsyncClient, stack: Stack, prompt: str, seed: int
) -> list[tuple[float, int]]:
    """(seconds since the request, characters of text so far) at each text delta."""
    started = time.perf_counter()
    marks: list[tuple[float, int]] = []
    chars = 0
    async with client.stream(
        "POST",
        f"{stack.sim_url}/v1/chat/completions",
        json=direct_body(prompt, seed),
        headers={"Authorization": f"Bearer {SIM_KEY}"},
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                content = choices[0].get("delta", {}).get("content")
                if content:
                    chars += len(content)
                    marks.append((time.perf_counter() - started, chars))
    return marks


async def _taskwire_stream(
    client: httpx.AsyncClient, stack: Stack, prompt: str, seed: int
) -> list[tuple[float, int]]:
    started = time.perf_counter()
    marks: list[tuple[float, int]] = []
    chars = 0
    task = text_task(prompt, deliveryMethod="stream", seed=seed)
    async with client.stream("POST", f"{stack.api_url}/v1", json=[task], headers=AUTH) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                text = json.loads(line[6:]).get("delta", {}).get("text")
                if text:
                    chars += len(text)
                    marks.append((time.perf_counter() - started, chars))
    return marks


async def time_to_first_token(stack: Stack, samples: int, warmup: int = 20) -> dict[str, Any]:
    prompt = f"bench ttft {uuid.uuid4().hex[:8]} [[sim:tokens=20]]"
    direct: list[float] = []
    through: list[float] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(warmup + samples):
            pair = (
                [
                    _direct_stream(client, stack, prompt, i),
                    _taskwire_stream(client, stack, prompt, i),
                ]
                if i % 2
                else [
                    _taskwire_stream(client, stack, prompt, i),
                    _direct_stream(client, stack, prompt, i),
                ]
            )
            first = await pair[0]
            second = await pair[1]
            d, t = (first, second) if i % 2 else (second, first)
            if i >= warmup:
                direct.append(d[0][0] * 1000)
                through.append(t[0][0] * 1000)
    return {"direct": direct, "through": through}


async def chunk_latency(
    stack: Stack, runs: int = 6, tps: int = 50, tokens: int = 100
) -> dict[str, Any]:
    """For each chunk taskwire delivers, how much later its last character arrived than the
    same character straight from the simulator (same seed, same pacing, runs interleaved)."""
    prompt = f"bench chunks {uuid.uuid4().hex[:8]} [[sim:tokens={tokens},tps={tps}]]"
    added: list[float] = []
    chunks_through = 0
    chunks_direct = 0
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(runs):
            direct = await _direct_stream(client, stack, prompt, i)
            through = await _taskwire_stream(client, stack, prompt, i)
            chunks_direct += len(direct)
            chunks_through += len(through)
            arrival = dict((chars, t) for t, chars in direct)
            for t, chars in through:
                if chars in arrival:
                    added.append((t - arrival[chars]) * 1000)
    return {
        "added": added,
        "tps": tps,
        "tokens": tokens,
        "chunks_direct": chunks_direct / runs,
        "chunks_through": chunks_through / runs,
    }


async def redis_commands(stack: Stack, tokens: int, tps: int) -> dict[str, Any]:
    """Every Redis command while one stream task of `tokens` tokens runs, from MONITOR."""
    monitor_client = aioredis.Redis.from_url(stack.redis_url)
    probe = aioredis.Redis.from_url(stack.redis_url)
    lines: list[str] = []
    started = asyncio.Event()

    async def watch() -> None:
        async with monitor_client.monitor() as monitor:
            async for command in monitor.listen():
                text = command["command"]
                if "bench-monitor-start" in text:
                    started.set()
                elif "bench-monitor-stop" in text:
                    return
                elif started.is_set():
                    lines.append(f"{command['client_type']} {text}")

    watcher = asyncio.create_task(watch())
    while not started.is_set():  # MONITOR is live once it echoes our marker
        await probe.echo("bench-monitor-start")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(started.wait(), 0.1)
    pace = f",tps={tps}" if tps else ""
    task = text_task(
        f"bench redis {uuid.uuid4().hex[:8]} [[sim:tokens={tokens}{pace}]]",
        deliveryMethod="stream",
        seed=1,
    )
    async with (
        httpx.AsyncClient(timeout=120) as client,
        client.stream("POST", f"{stack.api_url}/v1", json=[task], headers=AUTH) as response,
    ):
        await response.aread()
    while await outstanding(probe, KEYS) > 0:  # noqa: ASYNC110 (the worker settles its job)
        await asyncio.sleep(0.02)
    await probe.echo("bench-monitor-stop")
    await asyncio.wait_for(watcher, 5)
    await monitor_client.aclose()
    await probe.aclose()
    sent = Counter()
    inside = Counter()
    for line in lines:
        kind, _, command = line.partition(" ")
        name = command.split(" ", 1)[0].upper()
        if name in ("PING", "MONITOR", "INFO", "ECHO", "ZCARD"):
            continue
        (inside if kind == "lua" else sent)[name] += 1
    per_k = 1000 / tokens
    return {
        "tokens": tokens,
        "tps": tps,
        "sent": sum(sent.values()) * per_k,
        "inside": sum(inside.values()) * per_k,
        "appends": inside["XADD"] * per_k,
        "breakdown": dict(sent),
    }


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(re.findall(r"\d+", line)[0])
    return 0


async def open_streams(stack: Stack, counts: list[int]) -> list[dict[str, Any]]:
    """Hold N silent event streams open on the API process (tasks whose upstream hangs)."""
    assert stack.api is not None
    results = []
    limits = httpx.Limits(max_connections=max(counts) + 100, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=120, limits=limits) as client:
        tasks = [
            text_task(f"bench open {i} [[sim:hang]]", deliveryMethod="async")
            for i in range(max(counts))
        ]
        for start in range(0, len(tasks), 200):
            response = await client.post("/v1", json=tasks[start : start + 200], headers=AUTH)
            response.raise_for_status()
        await asyncio.sleep(1.0)
        baseline = _rss_kb(stack.api.pid)
        held: list[Any] = []
        opened = 0
        for count in counts:
            batch = tasks[opened:count]
            contexts = [
                client.stream("GET", f"/v1/tasks/{t['taskUUID']}/events", headers=AUTH)
                for t in batch
            ]

            async def enter(context: Any) -> Any:
                response = await context.__aenter__()
                lines = response.aiter_lines()
                first = await lines.__anext__()  # "retry: 1000": the stream is live
                assert first.startswith("retry:"), first
                return context

            started = time.perf_counter()
            held += await asyncio.gather(*(enter(c) for c in contexts))
            opened = count
            await asyncio.sleep(0.5)
            rss = _rss_kb(stack.api.pid)
            results.append(
                {
                    "streams": count,
                    "rss_mb": rss / 1024,
                    "kb_per_stream": (rss - baseline) / count,
                    "open_seconds": time.perf_counter() - started,
                    "subscribers_ok": True,
                }
            )
        for context in held:
            await context.__aexit__(None, None, None)
    return results


def ttft_table(run: dict[str, Any]) -> str:
    d, t = run["direct"], run["through"]
    return table(
        [
            "time to first token",
            "pairs",
            "direct median ms",
            "direct p99 ms",
            "taskwire median ms",
            "taskwire p99 ms",
            "added median ms",
            "ratio",
        ],
        [
            [
                "stream task vs the simulator's stream",
                len(d),
                median(d),
                percentile(d, 99),
                median(t),
                percentile(t, 99),
                median(t) - median(d),
                median(t) / median(d),
            ]
        ],
    )


def chunk_table(run: dict[str, Any]) -> str:
    added = run["added"]
    return table(
        [
            "upstream pacing",
            "chunks direct",
            "chunks taskwire",
            "added median ms",
            "added p90 ms",
            "added p99 ms",
        ],
        [
            [
                f"{run['tokens']} tokens at {run['tps']} tok/s",
                run["chunks_direct"],
                run["chunks_through"],
                median(added),
                percentile(added, 90),
                percentile(added, 99),
            ]
        ],
    )


def redis_table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        pace = f"{run['tps']} tok/s" if run["tps"] else "unthrottled"
        top = ", ".join(
            f"{k} {v}" for k, v in sorted(run["breakdown"].items(), key=lambda kv: -kv[1])[:4]
        )
        rows.append(
            [f"{run['tokens']} tokens, {pace}", run["sent"], run["appends"], run["inside"], top]
        )
    return table(
        [
            "stream",
            "commands sent per 1k tokens",
            "event appends per 1k tokens",
            "commands run inside scripts per 1k tokens",
            "most sent",
        ],
        rows,
    )


def streams_table(runs: list[dict[str, Any]]) -> str:
    return table(
        ["open streams on one API process", "API RSS MB", "KB per stream", "seconds to open"],
        [[r["streams"], r["rss_mb"], r["kb_per_stream"], r["open_seconds"]] for r in runs],
    )
