"""The task WebSocket: results per second pushed over one socket vs the same tasks over HTTP
(async, polled with getResponse), and idle authenticated sockets held by one API process
(memory per socket from VmRSS).

The two paths run in interleaved rounds on the same stack (one worker), each round the same
number of new tasks on the zero-latency simulator, and each side's CPU time is read from
the API, worker and benchmark processes around it: on a shared 2-core machine the rates
move a lot from one round to the next, the CPU a result costs each process much less.

Holding many sockets needs file descriptors on both ends: `raise_nofile` lifts this
process's RLIMIT_NOFILE soft limit (to the hard one, or higher when allowed) before the
stack starts, and the API process inherits it (subprocess keeps the parent's limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import statistics
import time
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from bench.common import API_KEY, table, text_task
from bench.streaming import _rss_kb
from devenv.stack import Stack

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROMPT = "bench ws {i} [[sim:tokens=5]]"  # a zero-latency simulator: the transport is measured
FRAME = 50  # tasks per socket frame / per POST
POLL = 100  # taskUUIDs per getResponse request
ROUNDS = 3  # interleaved rounds of each path


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit towards `wanted` (children inherit it); the
    soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and wanted > hard:
        with contextlib.suppress(ValueError, OSError):  # raising the hard limit needs root
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        wanted = hard
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def socket_url(stack: Stack) -> str:
    return stack.api_url.replace("http://", "ws://", 1) + "/v1"


async def connect(stack: Stack) -> ClientConnection:
    ws = await websockets.connect(
        socket_url(stack), compression=None, max_queue=None, open_timeout=60
    )
    await ws.send(json.dumps([{"taskType": "authentication", "apiKey": API_KEY}]))
    answer = json.loads(await ws.recv())
    assert answer["data"][0]["taskType"] == "authentication", answer
    return ws


async def socket_throughput(stack: Stack, count: int) -> dict[str, Any]:
    """`count` sync tasks sent over one socket in frames of FRAME; time until every result
    was pushed."""
    tasks = [text_task(PROMPT.format(i=f"s{i}"), deliveryMethod="sync") for i in range(count)]
    ws = await connect(stack)
    try:
        started = time.perf_counter()

        async def send() -> None:
            for start in range(0, count, FRAME):
                await ws.send(json.dumps(tasks[start : start + FRAME]))

        sender = asyncio.create_task(send())
        done: set[str] = set()
        errors = 0
        async with asyncio.timeout(300):
            while len(done) < count:
                frame = json.loads(await ws.recv())
                errors += len(frame.get("errors", []))
                for item in frame.get("data", []):
                    if item.get("status") in ("success", "error"):
                        done.add(item["taskUUID"])
                if errors:
                    raise RuntimeError(f"the socket refused tasks: {frame}")
        elapsed = time.perf_counter() - started
        await sender
    finally:
        await ws.close()
    messages = -(-count // FRAME)
    return {
        "path": "one WebSocket (results pushed)",
        "tasks": count,
        "seconds": elapsed,
        "messages": messages,
    }


async def http_throughput(stack: Stack, count: int) -> dict[str, Any]:
    """The same tasks as async over HTTP (POSTs of FRAME), polled with getResponse (POLL
    taskUUIDs a request) until every result is final."""
    tasks = [text_task(PROMPT.format(i=f"h{i}"), deliveryMethod="async") for i in range(count)]
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        for start in range(0, count, FRAME):
            response = await client.post("/v1", json=tasks[start : start + FRAME], headers=AUTH)
            response.raise_for_status()
        waiting = [t["taskUUID"] for t in tasks]
        polls = 0
        async with asyncio.timeout(300):
            while waiting:
                still: list[str] = []
                for start in range(0, len(waiting), POLL):
                    chunk = waiting[start : start + POLL]
                    lookups = [{"taskType": "getResponse", "taskUUID": u} for u in chunk]
                    response = await client.post("/v1", json=lookups, headers=AUTH)
                    response.raise_for_status()
                    polls += 1
                    still += [
                        item["taskUUID"]
                        for item in response.json()["data"]
                        if item["status"] == "processing"
                    ]
                waiting = still
        elapsed = time.perf_counter() - started
    return {
        "path": "HTTP async + getResponse polling",
        "tasks": count,
        "seconds": elapsed,
        "messages": -(-count // FRAME) + polls,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measured(stack: Stack, side: Any, count: int) -> dict[str, Any]:
    """One run of a path, with the CPU seconds each process spent on it."""
    assert stack.api is not None
    pids = {"api": stack.api.pid, "worker": stack.workers[0].pid}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client = own_cpu_seconds()
    run: dict[str, Any] = await side(stack, count)
    for name, pid in pids.items():
        run[f"{name}_cpu"] = cpu_seconds(pid) - before[name]
    run["client_cpu"] = own_cpu_seconds() - client
    return run


async def throughput(stack: Stack, count: int, rounds: int = ROUNDS) -> list[dict[str, Any]]:
    """ROUNDS of each path, interleaved (socket, HTTP, socket, ...), after a warm-up."""
    await socket_throughput(stack, min(count, 50))
    runs = []
    for _ in range(rounds):
        runs.append(await measured(stack, socket_throughput, count))
        runs.append(await measured(stack, http_throughput, count))
    return runs


def throughput_table(runs: list[dict[str, Any]]) -> str:
    """Per path: results per second (median and range over the rounds), CPU milliseconds
    per result in each process (median), and the client's messages per round."""
    rows = []
    by_path: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_path.setdefault(run["path"], []).append(run)
    for path, mine in by_path.items():
        rates = [r["tasks"] / r["seconds"] for r in mine]

        def per_result(key: str, mine: list[dict[str, Any]] = mine) -> float:
            return statistics.median(1000 * r[key] / r["tasks"] for r in mine)

        rows.append(
            [
                path,
                mine[0]["tasks"],
                len(mine),
                statistics.median(rates),
                f"{min(rates):.0f} – {max(rates):.0f}",
                per_result("api_cpu"),
                per_result("worker_cpu"),
                per_result("client_cpu"),
                statistics.median(r["messages"] for r in mine),
            ]
        )
    socket = [r for r in runs if r["path"].startswith("one WebSocket")]
    http = [r for r in runs if r["path"].startswith("HTTP")]
    ratios = [h["seconds"] / s["seconds"] for s, h in zip(socket, http, strict=False)]
    return (
        table(
            [
                "path",
                "tasks",
                "rounds",
                "results / s (median)",
                "range",
                "API CPU ms / result",
                "worker CPU ms / result",
                "client CPU ms / result",
                "client messages",
            ],
            rows,
        )
        + "\n\nSocket ÷ HTTP results per second, round by round: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + (f" (median {statistics.median(ratios):.2f})." if ratios else ".")
    )


async def idle_sockets(stack: Stack, counts: list[int]) -> list[dict[str, Any]]:
    """Open authenticated sockets in steps up to each count; the API's VmRSS per socket."""
    assert stack.api is not None
    pid = stack.api.pid
    await asyncio.sleep(1.0)
    baseline = _rss_kb(pid)
    held: list[ClientConnection] = []
    results = []
    try:
        for count in sorted(counts):
            started = time.perf_counter()
            while len(held) < count:
                step = min(100, count - len(held))
                held += await asyncio.gather(*(connect(stack) for _ in range(step)))
            opened = time.perf_counter() - started
            await asyncio.sleep(0.5)  # let the process settle before reading its memory
            rss = _rss_kb(pid)
            results.append(
                {
                    "sockets": count,
                    "rss_mb": rss / 1024,
                    "kb_per_socket": (rss - baseline) / count,
                    "open_seconds": opened,
                }
            )
    finally:
        await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
    return results


def sockets_table(runs: list[dict[str, Any]], nofile: int) -> str:
    return (
        table(
            ["idle sockets", "API VmRSS MB", "KB per socket", "seconds to open"],
            [[r["sockets"], r["rss_mb"], r["kb_per_socket"], r["open_seconds"]] for r in runs],
        )
        + f"\n\nRLIMIT_NOFILE (bench and API processes): {nofile}."
    )
