"""`make soak`: a memory soak. Mixed traffic for a long while (30 minutes by default;
`SOAK_MINUTES=8 make soak` or `python -m bench.soak --minutes 8` for less), with each API
and worker process's resident memory (VmRSS from /proc/<pid>/status) at the start, after
the warm-up, every sample interval and at the end, printed and recorded in
docs/benchmarks.md ("Memory soak").

Traffic, all at once, on one stack (one API process and one worker unless told otherwise):
* sync tasks, open loop (`--sync-rate` a second), 20 ms to the first token;
* stream tasks (`--stream-rate` a second), each read to its end;
* async tasks with a webhook to a local receiver (`--webhook-rate` a second);
* overload: every `--overload-every` seconds, `--overload-rate` sync tasks a second for
  `--overload-seconds` (far past the stack's capacity: most are refused, 503 serverBusy).

Target: after the warm-up (which includes the first overload), each process's RSS at the
end is within 10% of its RSS after the warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from bench.common import API_KEY, start_stack, table, text_task
from bench.loadgen import LoadGenerator
from bench.webhooks import LeanReceiver
from core.settings import PROJECT_ROOT
from devenv.stack import Stack

DOC = PROJECT_ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:soak:begin -->", "<!-- bench:soak:end -->"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SOAK_ENV = {
    "TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8",
    # the soak's own traffic is one key's: its per-key limits must not be what refuses it
    "TASKWIRE_KEY_MAX_QUEUED": "1000000",
}
TARGET = 0.10  # RSS at the end within 10% of RSS after the warm-up


def traced_api() -> None:
    """`python -m service` with tracemalloc on (`--tracemalloc`): SIGUSR2 dumps a snapshot
    to $TASKWIRE_SOAK_SNAPSHOT.<n> (n counts from 1), for the soak to compare."""
    import signal
    import tracemalloc

    from service.__main__ import main as serve

    tracemalloc.start(int(os.environ.get("TASKWIRE_SOAK_FRAMES", "10")))
    dumped = 0

    def dump(_sig: int, _frame: Any) -> None:
        nonlocal dumped
        dumped += 1
        tracemalloc.take_snapshot().dump(f"{os.environ['TASKWIRE_SOAK_SNAPSHOT']}.{dumped}")

    signal.signal(signal.SIGUSR2, dump)
    serve()


def snapshot_diff(before: Path, after: Path, top: int = 15) -> str:
    """What the API's Python heap holds at `after` and did not at `before`, by line."""
    import tracemalloc

    old, new = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    old, new = old.filter_traces(ignore), new.filter_traces(ignore)
    total = sum(stat.size for stat in new.statistics("filename"))
    grown = sum(stat.size for stat in old.statistics("filename"))
    lines = [f"traced Python heap: {grown / 1e6:.1f} MB -> {total / 1e6:.1f} MB"]
    for stat in new.compare_to(old, "lineno")[:top]:
        lines.append(
            f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {stat.traceback}"
        )
    return "\n".join(lines)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Sample:
    label: str
    at_s: float
    rss_kb: dict[str, int]  # process name -> VmRSS
    redis_mb: float


@dataclass
class Lane:
    """What one kind of traffic got back."""

    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)


@dataclass
class SoakRun:
    minutes: float
    warmup_s: float
    settings: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    lanes: dict[str, Lane] = field(default_factory=dict)
    webhooks_received: int = 0
    overloads: int = 0


class Receiver(LeanReceiver):
    """The benchmarks' lean webhook receiver, which on stop also closes the connections it
    holds (their handlers end at once instead of being cancelled when the loop closes)."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            await super()._serve(reader, writer)
        finally:
            self.writers.discard(writer)

    async def stop(self) -> None:
        await super().stop()
        for writer in list(self.writers):
            writer.close()
        await asyncio.sleep(0.1)


class Soak:
    def __init__(self, stack: Stack, args: argparse.Namespace):
        self.stack = stack
        self.args = args
        self.seconds = args.minutes * 60
        self.warmup_s = max(90.0, self.seconds / 6)
        self.run = SoakRun(args.minutes, self.warmup_s, vars(args).copy())
        self.run.lanes = {name: Lane() for name in ("sync", "stream", "webhook", "overload")}
        self.started = 0.0
        self.ends = 0.0
        self.receiver = Receiver()
        self.redis = aioredis.Redis.from_url(stack.redis_url)
        self.snapshot_base = stack.root / "api-tracemalloc"
        self.snapshots: list[Path] = []

    def processes(self) -> dict[str, int]:
        return {p.name: p.pid for p in [*self.stack.apis, *self.stack.workers] if p.running()}

    async def sample(self, label: str) -> Sample:
        info = await self.redis.info("memory")
        found = Sample(
            label,
            time.monotonic() - self.started if self.started else 0.0,
            {name: rss_kb(pid) for name, pid in self.processes().items()},
            info["used_memory"] / 1e6,
        )
        self.run.samples.append(found)
        if self.args.tracemalloc and label in ("after warm-up", "end (idle)"):
            api = self.stack.apis[0]
            api.signal(signal.SIGUSR2)
            self.snapshots.append(Path(f"{self.snapshot_base}.{len(self.snapshots) + 1}"))
        rss = ", ".join(f"{name} {kb / 1024:.1f} MB" for name, kb in found.rss_kb.items())
        print(f"[{found.at_s:7.1f} s] {label}: {rss}, redis {found.redis_mb:.1f} MB", flush=True)
        return found

    # --- traffic

    async def open_loop_lane(self, name: str, rate: float, build: Any, window_s: float) -> None:
        """Offer `rate` requests a second in windows of `window_s` until the soak ends."""
        lane = self.run.lanes[name]
        while (left := self.ends - time.monotonic()) > 1:
            # a generator per window: a keep-alive connection left idle longer than the
            # server keeps it (uvicorn: 5 s) would fail its next request, the client's doing
            gen = LoadGenerator(self.stack.api_url, max_connections=500)
            try:
                run = await gen.open_loop(rate, min(window_s, left), functools.partial(build, gen))
            finally:
                gen.close()
            lane.sent += run.offered
            lane.statuses.update(str(o.status) for o in run.outcomes)
            if run.failed:
                lane.statuses["connection error"] += run.failed

    def sync_request(self, gen: LoadGenerator, n: int, label: str = "soak sync") -> bytes:
        body = json.dumps([text_task(f"[[sim:ttft=20]] {label} {n}", seed=n)])
        return gen.post("/v1", body.encode(), AUTH)

    def webhook_request(self, gen: LoadGenerator, n: int) -> bytes:
        task = text_task(
            f"[[sim:ttft=20]] soak hook {n}", deliveryMethod="async", webhookURL=self.receiver.url()
        )
        return gen.post("/v1", json.dumps([task]).encode(), AUTH)

    async def streams(self) -> None:
        lane = self.run.lanes["stream"]
        limits = httpx.Limits(max_connections=100)
        client = httpx.AsyncClient(base_url=self.stack.api_url, timeout=60, limits=limits)
        async with client:

            async def one(n: int) -> None:
                task = text_task(
                    f"[[sim:ttft=20,tokens=60,tps=200]] soak stream {n}",
                    deliveryMethod="stream",
                    seed=n,
                )
                try:
                    async with client.stream("POST", "/v1", json=[task], headers=AUTH) as answer:
                        done = False
                        async for line in answer.aiter_lines():
                            done = done or line == "data: [DONE]"
                        status = str(answer.status_code)
                        lane.statuses[status if done or status != "200" else "200 cut"] += 1
                except httpx.HTTPError:
                    lane.statuses["connection error"] += 1

            running: set[asyncio.Task[None]] = set()
            n = 0
            while time.monotonic() < self.ends:
                lane.sent += 1
                n += 1
                task = asyncio.create_task(one(n))
                running.add(task)
                task.add_done_callback(running.discard)
                await asyncio.sleep(1 / self.args.stream_rate)
            await asyncio.gather(*running)

    async def overloads(self) -> None:
        lane = self.run.lanes["overload"]
        next_at = self.started + self.args.overload_first
        while max(next_at, time.monotonic()) + self.args.overload_seconds < self.ends:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            print(f"overload: {self.args.overload_rate:g}/s offered ...", flush=True)
            gen = LoadGenerator(self.stack.api_url, max_connections=1000)
            label = f"soak overload {self.run.overloads}"
            try:
                run = await gen.open_loop(
                    self.args.overload_rate,
                    self.args.overload_seconds,
                    functools.partial(self.sync_request, gen, label=label),
                )
            finally:
                gen.close()
            self.run.overloads += 1
            lane.sent += run.offered
            lane.statuses.update(str(o.status) for o in run.outcomes)
            if run.failed:
                lane.statuses["connection error"] += run.failed
            # after a burst that ran late, one more at once at most (no backlog of bursts)
            next_at = max(next_at + self.args.overload_every, time.monotonic())

    async def sampler(self) -> None:
        """A sample every `--sample-every` seconds, and one when the warm-up ends."""
        times = {self.warmup_s: "after warm-up"}
        at = self.args.sample_every
        while at < self.seconds - 1:
            if abs(at - self.warmup_s) > 5:
                times.setdefault(at, "load")
            at += self.args.sample_every
        for at, label in sorted(times.items()):
            await asyncio.sleep(max(0.0, self.started + at - time.monotonic()))
            await self.sample(label)

    async def go(self) -> SoakRun:
        await self.receiver.start()
        try:
            await self.sample("start (idle)")
            self.started = time.monotonic()
            self.ends = self.started + self.seconds
            await asyncio.gather(
                self.open_loop_lane("sync", self.args.sync_rate, self.sync_request, 10.0),
                self.open_loop_lane("webhook", self.args.webhook_rate, self.webhook_request, 10.0),
                self.streams(),
                self.overloads(),
                self.sampler(),
            )
            await self.sample("end of traffic")
            await self.drained()
            await asyncio.sleep(self.args.settle)
            await self.sample("end (idle)")
            self.run.webhooks_received = self.receiver.count
        finally:
            await self.receiver.stop()
            await self.redis.aclose()
        return self.run

    async def drained(self, within_s: float = 120.0) -> None:
        from core.keys import Keys
        from core.scheduler import outstanding

        deadline = time.monotonic() + within_s
        keys = Keys("tw", "tw:queue")
        while await outstanding(self.redis, keys) > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 (a measuring loop)
            await asyncio.sleep(0.2)


# --- the record


def verdicts(run: SoakRun) -> dict[str, tuple[int, int, int, float]]:
    """Per process: RSS at start, after warm-up, at the end (idle), and the growth ratio."""
    start = run.samples[0].rss_kb
    warm = next((s.rss_kb for s in run.samples if s.label == "after warm-up"), start)
    end = run.samples[-1].rss_kb
    return {
        name: (start[name], warm[name], end[name], end[name] / warm[name] - 1)
        for name in start
        if name in warm and name in end
    }


def report(run: SoakRun, machine: str) -> str:
    names = list(run.samples[0].rss_kb)
    rows = [
        [s.label, f"{s.at_s / 60:.1f}", *[s.rss_kb.get(n, 0) / 1024 for n in names], s.redis_mb]
        for s in run.samples
    ]
    rss = table(["sample", "minute", *[f"{n} RSS MB" for n in names], "Redis used MB"], rows)
    lanes = table(
        ["traffic", "requests", "answers"],
        [
            [name, lane.sent, ", ".join(f"{k}: {v:,}" for k, v in sorted(lane.statuses.items()))]
            for name, lane in run.lanes.items()
        ],
    )
    found = verdicts(run)
    summary = table(
        ["process", "start MB", "after warm-up MB", "end MB", "end vs warm-up", "target ≤ +10%"],
        [
            [
                name,
                start / 1024,
                warm / 1024,
                end / 1024,
                f"{growth:+.1%}",
                "met" if growth <= TARGET else "not met",
            ]
            for name, (start, warm, end, growth) in found.items()
        ],
    )
    a = run.settings
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Measured {stamp} on {machine}: {run.minutes:g} minutes, warm-up "
        f"{run.warmup_s / 60:.1f} minutes; sync {a['sync_rate']:g}/s, streams "
        f"{a['stream_rate']:g}/s, webhook tasks {a['webhook_rate']:g}/s throughout, and "
        f"{run.overloads} overloads of {a['overload_rate']:g} sync tasks/s for "
        f"{a['overload_seconds']:g} s (every {a['overload_every']:g} s); "
        f"{run.webhooks_received:,} webhooks received.\n\n{summary}\n\n{rss}\n\n{lanes}\n"
    )


def record(body: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{body}{END}"
    if BEGIN in text:
        start, stop = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + block + text[stop:]
    else:
        text = text.rstrip("\n") + f"\n\n## Memory soak\n\n{INTRO}\n\n{block}\n"
    DOC.write_text(text)


INTRO = re.sub(
    r"\s*\n\s*",
    " ",
    """`make soak` (`SOAK_MINUTES=8 make soak` for a shorter run; `python -m bench.soak
    --help` for the rates): one API process and one worker under sync, stream and webhook
    traffic at once, with an overload burst every few minutes, and each process's VmRSS at
    the start, after the warm-up (which includes the first overload), during the run and at
    the end, once the queue has drained. Target: the end within 10% of after the warm-up.""",
).strip()


def trace_api(stack: Stack) -> None:
    """Replace the first API process by one with tracemalloc on (same port)."""
    from devenv.procs import Process, http_ok, python_argv, wait_until

    old = stack.apis[0]
    old.stop()
    env = stack.env()
    env["PORT"] = str(stack.api_port)
    env["TASKWIRE_SOAK_SNAPSHOT"] = str(stack.root / "api-tracemalloc")
    argv = python_argv("-c", "from bench.soak import traced_api; traced_api()")
    api = Process("api", argv, env, stack.log_dir).start()
    wait_until(http_ok(f"{stack.api_url}/livez"), 30, "the traced API", api.check_alive)
    stack.apis[0] = api


def main() -> None:
    parser = argparse.ArgumentParser(description="taskwire memory soak")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--apis", type=int, default=1, help="API processes")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sync-rate", type=float, default=20.0, help="sync tasks a second")
    parser.add_argument("--stream-rate", type=float, default=2.0, help="stream tasks a second")
    parser.add_argument("--webhook-rate", type=float, default=5.0, help="webhook tasks a second")
    parser.add_argument("--overload-rate", type=float, default=600.0)
    parser.add_argument("--overload-seconds", type=float, default=10.0)
    parser.add_argument("--overload-every", type=float, default=150.0, help="seconds")
    parser.add_argument("--overload-first", type=float, default=30.0, help="seconds in")
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--settle", type=float, default=10.0, help="idle seconds before the end")
    parser.add_argument("--no-record", action="store_true", help="do not update the doc")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace the API's Python heap; print what grew from the warm-up to the end "
        "(slows the API: its RSS is then not comparable, and nothing is recorded)",
    )
    args = parser.parse_args()
    args.no_record = args.no_record or args.tracemalloc

    from bench.__main__ import machine

    stack = start_stack(workers=args.workers, env=SOAK_ENV)
    for _ in range(args.apis - 1):
        stack.start_api()
    if args.tracemalloc:
        trace_api(stack)
    print(f"stack under {stack.root}", flush=True)
    try:
        soak = Soak(stack, args)
        run = asyncio.run(soak.go())
    finally:
        stack.stop()
    if args.tracemalloc:
        time.sleep(1)
        print(snapshot_diff(soak.snapshots[0], soak.snapshots[1]))
    body = report(run, machine())
    print("\n" + body)
    if not args.no_record:
        record(body)
        print(f"recorded in {DOC.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
