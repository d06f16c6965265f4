"""What metrics and tracing cost: sync latency and throughput on the same stack shape with
tracing off and with tracing on (OTLP/HTTP export to a local sink that answers 200, at 10%
sampling and at 100%), in alternating rounds of one run.

Metrics cannot be switched off (recording is an in-memory increment in every process); what
varies with them is scraping, so in the "on" configurations the API's and the worker's
`/metrics` are scraped once a second (Prometheus usually scrapes every 15 to 60 s). In the
"off" configuration nothing scrapes and no OTEL_* variable is set.

Latency: one client asking back to back (the lean raw-socket generator, bench/loadgen.py).
Throughput: 64 clients asking back to back; sync results per second answered 200, and the
API's and worker's CPU time per task over that run (from /proc: on a shared machine the
CPU per task moves far less than the rate, which other processes' load moves too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.common import API_KEY, median, percentile, start_stack, table, text_task
from bench.loadgen import LoadGenerator, Run
from bench.sidebyside import cpu_seconds, processes
from devenv.procs import free_port, http_ok, wait_until
from devenv.stack import Stack

# A stand-in OTLP/HTTP collector: 200 to every POST, counts what it got (GET answers them).
SINK = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
got = {"requests": 0, "bytes": 0}
class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        got["requests"] += 1
        got["bytes"] += n
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        raw = json.dumps(got).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


class OtlpSink:
    """The stand-in collector, a subprocess on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", SINK, str(self.port)])
        wait_until(http_ok(f"http://127.0.0.1:{self.port}/"), 10, "the OTLP sink")

    def counts(self) -> dict[str, int]:
        got: dict[str, int] = httpx.get(f"http://127.0.0.1:{self.port}/").json()
        return got

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass
class Config:
    label: str
    sampling: float | None  # None: tracing off
    scrape: bool


CONFIGS = [
    Config("metrics and tracing off", None, False),
    Config("metrics scraped 1/s, tracing on at 10%", 0.1, True),
    Config("metrics scraped 1/s, tracing on at 100%", 1.0, True),
]


@dataclass
class Measured:
    config: Config
    round: int
    latency_ms: list[float] = field(default_factory=list)
    per_second: float = 0.0
    cpu_ms_per_task: float = 0.0  # API + worker, from /proc, over the throughput run
    failed: int = 0
    exported: dict[str, int] = field(default_factory=dict)


def otel_env(sink_port: int, sampling: float) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(sampling),
    }


def _requests(gen: LoadGenerator) -> Any:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    label = uuid.uuid4().hex[:8]

    def build(n: int) -> bytes:
        task = text_task(f"bench observability {label}", seed=n)
        return gen.post("/v1", json.dumps([task]).encode(), headers)

    return build


async def _scrape(urls: list[str], stop: asyncio.Event) -> int:
    """Scrape every URL once a second until `stop`; the number of scrapes answered 200."""
    done = 0
    async with httpx.AsyncClient(timeout=5) as client:
        while not stop.is_set():
            for url in urls:
                if (await client.get(url)).status_code == 200:
                    done += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    return done


def _ok(run: Run) -> int:
    return sum(1 for outcome in run.outcomes if outcome.status == 200)


async def measure_one(
    config: Config, round_: int, sink: OtlpSink, seconds: float, clients: int
) -> Measured:
    env = otel_env(sink.port, config.sampling) if config.sampling is not None else {}
    stack: Stack = start_stack(workers=0, env=env)
    probe_port = free_port()
    try:
        stack.start_worker({"TASKWIRE_WORKER_HTTP_PORT": str(probe_port)})
        scrape_urls = [f"{stack.api_url}/metrics", f"http://127.0.0.1:{probe_port}/metrics"]
        wait_until(http_ok(scrape_urls[1]), 20, "the worker's probe port")
        before = await asyncio.to_thread(sink.counts)
        stop = asyncio.Event()
        scraper = asyncio.create_task(_scrape(scrape_urls, stop)) if config.scrape else None
        gen = LoadGenerator(stack.api_url)
        try:
            build = _requests(gen)
            await gen.closed_loop(8, 2.0, build)  # warm-up: connections, caches, the JIT-less
            latency = await gen.closed_loop(1, seconds, build)
            pids = [pid for name, pid in processes(stack).items() if name in ("api", "worker")]
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            load = await gen.closed_loop(clients, seconds, build)
            cpu_used = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        finally:
            gen.close()
            stop.set()
            if scraper is not None:
                await scraper
        # the batch processor exports on a schedule (5 s by default): give it one
        await asyncio.sleep(6 if config.sampling is not None else 0)
        after = await asyncio.to_thread(sink.counts)
    finally:
        stack.stop()
    return Measured(
        config,
        round_,
        latency_ms=[o.latency_ms for o in latency.outcomes if o.status == 200],
        per_second=_ok(load) / load.seconds,
        cpu_ms_per_task=cpu_used * 1000 / max(1, _ok(load)),
        failed=latency.failed + load.failed + (len(load.outcomes) - _ok(load)),
        exported={key: after[key] - before[key] for key in ("requests", "bytes")},
    )


async def cost(
    sink: OtlpSink, rounds: int = 2, seconds: float = 8.0, clients: int = 64
) -> list[Measured]:
    """Every configuration once per round, in alternating order, against one OTLP sink."""
    runs = []
    for round_ in range(1, rounds + 1):
        order = CONFIGS if round_ % 2 else list(reversed(CONFIGS))
        for config in order:
            print(f"  round {round_}: {config.label} ...", flush=True)
            runs.append(await measure_one(config, round_, sink, seconds, clients))
            await asyncio.sleep(1)
    return runs


def cost_table(runs: list[Measured]) -> str:
    rows: list[list[Any]] = []
    baseline = [run.per_second for run in runs if run.config.sampling is None]
    base = median(baseline) if baseline else 0.0
    baseline_cpu = [run.cpu_ms_per_task for run in runs if run.config.sampling is None]
    base_cpu = median(baseline_cpu) if baseline_cpu else 0.0
    for config in CONFIGS:
        mine = [run for run in runs if run.config is config]
        latencies = [value for run in mine for value in run.latency_ms]
        per_second = median([run.per_second for run in mine])
        cpu = median([run.cpu_ms_per_task for run in mine])
        rows.append(
            [
                config.label,
                len(latencies),
                median(latencies),
                percentile(latencies, 99),
                " / ".join(f"{run.per_second:.0f}" for run in mine),
                per_second,
                f"{(per_second / base - 1) * 100:+.1f}%" if base else "n/a",
                cpu,
                f"{(cpu / base_cpu - 1) * 100:+.1f}%" if base_cpu else "n/a",
                sum(run.failed for run in mine),
                sum(run.exported.get("requests", 0) for run in mine),
            ]
        )
    return table(
        [
            "configuration",
            "latency samples",
            "sync p50 ms",
            "sync p99 ms",
            "results/s per round",
            "results/s (median)",
            "vs off",
            "API+worker CPU ms/task",
            "CPU vs off",
            "failed",
            "OTLP exports received",
        ],
        rows,
    )
