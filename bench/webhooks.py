"""Webhook benchmarks: deliveries per second to a local receiver, and the lag from a result
being final to the receiver having it."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis

from bench.common import API_KEY, median, percentile, table, text_task
from core.keys import Keys, TaskRef
from core.scheduler import outstanding
from devenv.stack import Stack
from service.auth import key_digest, owner_id

AUTH = {"Authorization": f"Bearer {API_KEY}"}
WEBHOOK_ENV = {"TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8"}

KEYS = Keys("tw", "tw:queue")


@dataclass
class LeanReceiver:
    """A minimal HTTP/1.1 receiver (keep-alive, 204 answers) so the receiver is not what is
    measured. Records when each webhook-id arrived."""

    port: int = 0
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    count: int = 0
    server: asyncio.Server | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrived = time.time()
                length = 0
                msg_id = ""
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    lowered = name.strip().lower()
                    if lowered == b"content-length":
                        length = int(value)
                    elif lowered == b"webhook-id":
                        msg_id = value.strip().decode()
                await reader.readexactly(length)
                self.arrivals.setdefault(msg_id, []).append(arrived)
                self.count += 1
                self.changed.set()
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def wait_count(self, count: int, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while self.count < count:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.count} of {count} deliveries arrived")
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                continue


def _msg_id(task_uuid: str) -> str:
    return f"msg_{task_uuid.replace('-', '')}_0"


async def lag(stack: Stack, samples: int) -> dict[str, Any]:
    """One task at a time: result final (its event id's time) to webhook receipt."""
    receiver = LeanReceiver()
    await receiver.start()
    keys = Keys("tw", "tw:queue")
    owner = owner_id(key_digest(API_KEY))
    redis = aioredis.Redis.from_url(stack.redis_url)
    lags: list[float] = []
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as client:
        for i in range(samples + 10):
            task = text_task(
                "bench webhook lag", deliveryMethod="async", seed=i, webhookURL=receiver.url()
            )
            expected = receiver.count + 1
            (await client.post("/v1", json=[task], headers=AUTH)).raise_for_status()
            await receiver.wait_count(expected, 30)
            arrived = receiver.arrivals[_msg_id(task["taskUUID"])][0]
            events = await redis.xrange(keys.events(TaskRef(owner, task["taskUUID"])))
            final_ms = max(int(event_id.split(b"-")[0]) for event_id, _ in events)
            if i >= 10:
                lags.append((arrived - final_ms / 1000) * 1000)
    await redis.aclose()
    await receiver.stop()
    return {"lags": lags}


async def throughput(stack: Stack, deliveries: int) -> dict[str, Any]:
    """A backlog of `deliveries` re-sends, queued while the workers are paused, then timed
    from the moment they resume to the last receipt."""
    receiver = LeanReceiver()
    await receiver.start()
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=120, limits=limits) as client:
        tasks = [
            text_task(
                "bench webhook rate", deliveryMethod="async", seed=i, webhookURL=receiver.url()
            )
            for i in range(deliveries)
        ]
        for start in range(0, deliveries, 100):
            (
                await client.post("/v1", json=tasks[start : start + 100], headers=AUTH)
            ).raise_for_status()
        await receiver.wait_count(deliveries, 120)  # every first delivery arrived ...
        redis = aioredis.Redis.from_url(stack.redis_url)
        while await outstanding(redis, KEYS) > 0:  # noqa: ASYNC110 ... and was recorded
            await asyncio.sleep(0.05)
        await redis.aclose()
        for worker in stack.workers:
            worker.signal(signal.SIGSTOP)
        limit = asyncio.Semaphore(16)

        async def resend(task: dict[str, Any]) -> None:
            async with limit:
                response = await client.post(
                    f"/v1/tasks/{task['taskUUID']}/webhooks/redeliver", headers=AUTH
                )
                response.raise_for_status()
                if not response.json()["data"][0]["resent"]:
                    raise RuntimeError("a delivery was not re-sent")

        await asyncio.gather(*(resend(task) for task in tasks))
        baseline = receiver.count
        started = time.time()
        for worker in stack.workers:
            worker.signal(signal.SIGCONT)
        await receiver.wait_count(baseline + deliveries, 120)
        last = max(times[-1] for times in receiver.arrivals.values())
    await receiver.stop()
    seconds = last - started
    return {
        "deliveries": deliveries,
        "seconds": seconds,
        "rate": deliveries / seconds,
        "workers": len(stack.workers),
    }


def throughput_table(runs: list[dict[str, Any]]) -> str:
    return table(
        ["webhook deliveries (backlog, local receiver)", "deliveries", "seconds", "deliveries/s"],
        [
            [
                f"{run['workers']} worker process{'es' if run['workers'] > 1 else ''}",
                run["deliveries"],
                run["seconds"],
                run["rate"],
            ]
            for run in runs
        ],
    )


def lag_table(run: dict[str, Any]) -> str:
    lags = run["lags"]
    return table(
        ["result final -> receiver has it", "samples", "median ms", "p90 ms", "p99 ms"],
        [
            [
                "one task at a time, idle stack",
                len(lags),
                median(lags),
                percentile(lags, 90),
                percentile(lags, 99),
            ]
        ],
    )
