"""Side by side under load: open-loop offered rates against taskwire (sync tasks through one
API process and one worker) and against the direct path (the same chat completion sent
straight to the simulator), with each process's CPU milliseconds per task from /proc.

Each step offers `rate` requests a second for `seconds` (bench/loadgen.py: requests are due
on a schedule, latency is measured from when each was due, so a stalled server is not
hidden); taskwire's and the direct path's steps alternate at each rate. CPU per task is
the step's user + system CPU time of each process (/proc/<pid>/stat) divided by the
requests answered 200 in the step. The simulator answers after `ttft_ms` with 8 tokens.

Profiling recipe (keep with the numbers): while a step runs, `py-spy record -r 200 -d 10
-f raw -o worker.txt --pid <worker pid>` (and the API's pid); the busiest leaf frames, and
the share of samples under each taskwire module, say where a task's CPU goes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import API_KEY, SIM_KEY, direct_body, median, percentile, table, text_task
from bench.loadgen import LoadGenerator, Run
from devenv.stack import Stack

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def processes(stack: Stack) -> dict[str, int]:
    found = {"api": stack.apis[0].popen, "worker": stack.workers[0].popen}
    pids = {name: proc.pid for name, proc in found.items() if proc is not None}
    if stack.redis_server is not None and stack.redis_server.process is not None:
        pids["redis"] = stack.redis_server.process.pid
    if stack.sim is not None and stack.sim.popen is not None:
        pids["simulator"] = stack.sim.popen.pid
    return pids


@dataclass
class Step:
    path: str  # "taskwire" or "direct"
    rate: int
    seconds: float
    ok_ms: list[float] = field(default_factory=list)
    errors: int = 0
    cpu_ms_per_task: dict[str, float] = field(default_factory=dict)

    @property
    def achieved(self) -> float:
        return len(self.ok_ms) / self.seconds


def _taskwire(gen: LoadGenerator, ttft_ms: int, label: str) -> Callable[[int], bytes]:
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def build(n: int) -> bytes:
        task = text_task(f"[[sim:ttft={ttft_ms},tokens=8]] {label}", seed=n)
        return gen.post("/v1", json.dumps([task]).encode(), headers)

    return build


def _direct(gen: LoadGenerator, ttft_ms: int, label: str) -> Callable[[int], bytes]:
    headers = {"Authorization": f"Bearer {SIM_KEY}"}

    def build(n: int) -> bytes:
        body = direct_body(f"[[sim:ttft={ttft_ms},tokens=8]] {label}", n)
        body["stream"] = False
        body.pop("stream_options")
        return gen.post("/v1/chat/completions", json.dumps(body).encode(), headers)

    return build


async def _step(
    stack: Stack, path: str, rate: int, seconds: float, ttft_ms: int, label: str
) -> Step:
    url = stack.api_url if path == "taskwire" else stack.sim_url
    gen = LoadGenerator(url)
    build = (_taskwire if path == "taskwire" else _direct)(gen, ttft_ms, label)
    pids = processes(stack)
    try:
        # warm-up at the step's own rate, not measured: connections, pools and caches, so
        # the first step does not measure a fresh process's start (its p99 did)
        await gen.open_loop(rate, 2.0, build)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        run: Run = await gen.open_loop(rate, seconds, build)
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    finally:
        gen.close()
    step = Step(path, rate, seconds, ok_ms=run.latencies(200))
    step.errors = run.failed + sum(1 for o in run.outcomes if o.status != 200)
    answered = max(1, len(step.ok_ms))
    step.cpu_ms_per_task = {name: (after[name] - before[name]) * 1000 / answered for name in pids}
    return step


async def load_steps(stack: Stack, rates: list[int], seconds: float, ttft_ms: int) -> list[Step]:
    steps = []
    for index, rate in enumerate(rates):
        order = ("taskwire", "direct") if index % 2 == 0 else ("direct", "taskwire")
        for path in order:
            print(f"  {path} at {rate}/s ...", flush=True)
            steps.append(await _step(stack, path, rate, seconds, ttft_ms, f"{path} {rate}"))
    return steps


def steps_table(steps: list[Step], ttft_ms: int) -> str:
    rows: list[list[Any]] = []
    rates = sorted({step.rate for step in steps})
    best = 0
    for rate in rates:
        tw = next(s for s in steps if s.rate == rate and s.path == "taskwire")
        direct = next(s for s in steps if s.rate == rate and s.path == "direct")
        tw_p99 = percentile(tw.ok_ms, 99) if tw.ok_ms else float("nan")
        d_p99 = percentile(direct.ok_ms, 99) if direct.ok_ms else float("nan")
        healthy = tw.errors == 0 and tw_p99 <= d_p99 + 50
        if healthy and best == rate - (rates[1] - rates[0] if len(rates) > 1 else 0):
            best = rate
        cpu = tw.cpu_ms_per_task
        rows.append(
            [
                rate,
                tw.achieved,
                median(tw.ok_ms) if tw.ok_ms else "n/a",
                tw_p99,
                tw.errors,
                direct.achieved,
                median(direct.ok_ms) if direct.ok_ms else "n/a",
                d_p99,
                direct.errors,
                cpu.get("api", 0.0),
                cpu.get("worker", 0.0),
                cpu.get("api", 0.0) + cpu.get("worker", 0.0),
                cpu.get("redis", 0.0),
            ]
        )
    body = table(
        [
            "offered/s",
            "taskwire ok/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "direct ok/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "API CPU ms/task",
            "worker CPU ms/task",
            "API+worker",
            "Redis CPU ms/task",
        ],
        rows,
    )
    return (
        f"Simulator time to first token {ttft_ms} ms, 8 tokens; each step "
        f"{steps[0].seconds:g} s, open loop.\n\n{body}\n\nHighest offered rate with "
        f"taskwire's p99 within 50 ms of the direct path's (and no errors), counting up "
        f"from the lowest: **{best or 'none'}/s**."
    )
