"""A rolling update under sustained load loses nothing and shows no 5xx to a client that
retries as the README says (connection errors and 503 with Retry-After: the same request
again, the same taskUUIDs, to whichever API process is ready).

Two API processes behind a client-side balancer that probes each one's /readyz (as a load
balancer would) and two workers, with sync, async (polled) and webhook tasks in a loop. In
the middle, each API process is sent SIGTERM and replaced by a new one on another port, and
each worker is sent SIGTERM while it runs a slow result and replaced. Afterwards every
accepted task has exactly its final result, each reached the simulator once (nothing ran
twice), each webhook result was delivered under one id, and every old process exited 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from devenv.procs import Process, free_port, wait_until
from devenv.stack import Stack
from tests.conftest import KEY_A, MODEL, StackFactory
from tests.receiver import Receiver, running_receiver

pytestmark = pytest.mark.timeout(180)

AUTH = {"Authorization": f"Bearer {KEY_A}"}
ROLLOUT_ENV = {
    "TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8",
    "TASKWIRE_WEBHOOK_SCHEDULE_S": "0,0.3,0.5,1.2",
    "TASKWIRE_WEBHOOK_JITTER": "0",
    "TASKWIRE_WEBHOOK_TIMEOUT_S": "2",
    # the balancer probes /readyz every PROBE_S: the delay covers a few probes
    "TASKWIRE_API_SHUTDOWN_DELAY_S": "1",
    # shorter than the slowest sync task: requests still waiting when it ends must not fail
    "TASKWIRE_API_SHUTDOWN_GRACE_S": "2",
    # longer than any result: a stopped worker finishes what it runs
    "TASKWIRE_WORKER_SHUTDOWN_GRACE_S": "20",
    # loaded CI machines are slow to start work; nothing here should be shed
    "TASKWIRE_INTERACTIVE_WAIT_BUDGET_S": "0",
    "TASKWIRE_JOB_LEASE_S": "5",
}
PROBE_S = 0.2
ANSWER_WITHIN_S = 90.0  # a request retried this long without an answer fails the test
SLOW = "[[sim:tokens=20,tps=10]]"  # about 2 s upstream
LONG = "[[sim:tokens=40,tps=10]]"  # about 4 s: longer than the API's shutdown grace
FAST = "[[sim:tokens=4]]"


@dataclass
class Backend:
    url: str
    http: httpx.AsyncClient
    ready: bool = False
    retired: bool = False  # its process was replaced: probe no more
    failed_at: float = -1e9  # its last connection error (the passive check)


@dataclass
class Seen:
    """Everything the retrying client saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # 5xx not retryable as documented
    retried_503: int = 0


class Balancer:
    """Sends each request to an API process (round robin) and retries as a client should: on
    a connection error or a 503 with Retry-After, the same request again.

    With `probing`, only to processes whose /readyz answered 200 at the last probe, as a
    load balancer with active health checks does. Without, to every process it was told of
    except one that failed a connection in the last second (nginx's passive checks): it
    meets the draining, closing and closed processes, and retries its way past them."""

    def __init__(self, urls: list[str], probing: bool = True):
        self.backends: list[Backend] = []
        self.probing = probing
        self.seen = Seen()
        self._turn = itertools.count()
        for url in urls:
            self.add(url)

    def add(self, url: str) -> None:
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        self.backends.append(Backend(url, httpx.AsyncClient(base_url=url, limits=limits)))

    def retire(self, url: str) -> None:
        for backend in self.backends:
            if backend.url == url:
                backend.retired = True
                backend.ready = False

    async def probe(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for backend in list(self.backends):
                if backend.retired:
                    continue
                try:
                    answer = await backend.http.get("/readyz", timeout=1.0)
                    backend.ready = answer.status_code == 200
                except httpx.TransportError:
                    backend.ready = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_S)

    async def post(self, body: list[dict[str, Any]]) -> httpx.Response:
        deadline = time.monotonic() + ANSWER_WITHIN_S
        while True:
            assert time.monotonic() < deadline, f"no answer for {body} in {ANSWER_WITHIN_S} s"
            now = time.monotonic()
            ready = [
                b
                for b in self.backends
                if (b.ready if self.probing else now - b.failed_at > 1.0 and not b.retired)
            ]
            if not ready:
                await asyncio.sleep(0.05)
                continue
            backend = ready[next(self._turn) % len(ready)]
            try:
                response = await backend.http.post("/v1", json=body, headers=AUTH, timeout=90)
            except httpx.TransportError as exc:
                self.seen.transport_errors[type(exc).__name__] += 1
                backend.failed_at = time.monotonic()
                await asyncio.sleep(0.05)
                continue
            self.seen.statuses[response.status_code] += 1
            if response.status_code == 503 and "retry-after" in response.headers:
                self.seen.retried_503 += 1
                await asyncio.sleep(min(float(response.headers["retry-after"]), 1.0))
                continue
            if response.status_code >= 500:
                self.seen.server_errors.append(
                    f"{backend.url} {response.status_code} {response.text[:300]}"
                )
            return response

    async def final(self, task_uuid: str) -> list[dict[str, Any]]:
        """getResponse until no result is processing."""
        while True:
            response = await self.post([{"taskType": "getResponse", "taskUUID": task_uuid}])
            assert response.status_code == 200, response.text
            items: list[dict[str, Any]] = response.json()["data"]
            if all(item["status"] != "processing" for item in items):
                return items
            await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        for backend in self.backends:
            await backend.http.aclose()


@dataclass
class Sent:
    task: dict[str, Any]
    marker: str
    items: list[dict[str, Any]] = field(default_factory=list)


def task(kind: str, n: int, scenario: str, **fields: Any) -> Sent:
    marker = f"rollout-{kind}-{n}-{uuid.uuid4().hex[:8]}"
    body = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "messages": [{"role": "user", "content": f"{scenario} {marker}"}],
        "seed": n,
        **fields,
    }
    return Sent(body, marker)


async def sync_user(
    lb: Balancer, name: str, scenarios: list[str], stop: asyncio.Event
) -> list[Sent]:
    sent: list[Sent] = []
    for n in itertools.count():
        if stop.is_set():
            return sent
        one = task(name, n, scenarios[n % len(scenarios)])
        sent.append(one)
        response = await lb.post([one.task])
        assert response.status_code in (200, 202), response.text
        one.items = response.json()["data"]
        if response.status_code == 202:  # still running when the wait ended: poll
            one.items = await lb.final(one.task["taskUUID"])


async def async_user(
    lb: Balancer, name: str, stop: asyncio.Event, webhook_url: str | None = None
) -> list[Sent]:
    sent: list[Sent] = []
    for n in itertools.count():
        if stop.is_set():
            return sent
        fields: dict[str, Any] = {"deliveryMethod": "async"}
        if webhook_url is not None:
            fields["webhookURL"] = webhook_url
        one = task(name, n, SLOW if n % 2 else FAST, **fields)
        sent.append(one)
        response = await lb.post([one.task])
        assert response.status_code == 200, response.text
        one.items = await lb.final(one.task["taskUUID"])


def jobs_running(probe_url: str) -> float:
    try:
        text = httpx.get(f"{probe_url}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("taskwire_worker_jobs_running{")
    )


@dataclass
class Rollout:
    """The rolling update, run in a thread beside the load (starting a process blocks)."""

    stack: Stack
    balancers: list[Balancer]
    loop: asyncio.AbstractEventLoop
    old: list[tuple[Process, int]] = field(default_factory=list)  # (process, exit code)
    mid_job: list[str] = field(default_factory=list)  # workers that finished jobs after SIGTERM
    probe_urls: dict[str, str] = field(default_factory=dict)
    error: BaseException | None = None

    def start_worker(self) -> Process:
        port = free_port()
        worker = self.stack.start_worker({"TASKWIRE_WORKER_HTTP_PORT": str(port)})
        self.probe_urls[worker.name] = f"http://127.0.0.1:{port}"
        return worker

    def replace_api(self, index: int) -> None:
        old, old_url = self.stack.apis[index], self.stack.api_urls[index]
        old.signal(signal.SIGTERM)
        new = self.stack.start_api()  # a new port, as a new pod gets a new address
        for lb in self.balancers:
            self.loop.call_soon_threadsafe(lb.add, self.stack.api_urls[-1])
        assert old.popen is not None and new.running()
        self.old.append((old, old.popen.wait(60)))
        for lb in self.balancers:
            self.loop.call_soon_threadsafe(lb.retire, old_url)

    def replace_worker(self, worker: Process) -> None:
        probe = self.probe_urls[worker.name]
        # two at once: one of them is a slow result (the load keeps several running)
        wait_until(lambda: jobs_running(probe) >= 2, 30, f"{worker.name} to run jobs")
        finished_before = worker.log_text().count('"result.finished"')
        worker.signal(signal.SIGTERM)
        self.start_worker()
        assert worker.popen is not None
        self.old.append((worker, worker.popen.wait(60)))
        if worker.log_text().count('"result.finished"') > finished_before:
            self.mid_job.append(worker.name)  # it finished what it ran, after the signal

    def run(self, workers: list[Process]) -> None:
        try:
            time.sleep(2)
            self.replace_api(0)
            self.replace_worker(workers[0])
            self.replace_api(1)
            self.replace_worker(workers[1])
            time.sleep(1)
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


async def test_rolling_update_under_load_loses_nothing(
    make_stack: StackFactory, receiver: Receiver
) -> None:
    stack = make_stack(workers=0, apis=2, env=ROLLOUT_ENV, upstream_timeout_s=15.0)
    lb, naive = Balancer(stack.api_urls), Balancer(stack.api_urls, probing=False)
    rollout = Rollout(stack, [lb, naive], asyncio.get_running_loop())
    workers = [rollout.start_worker(), rollout.start_worker()]
    hook = receiver.answer("/rollout")
    stop, probes_stop = asyncio.Event(), asyncio.Event()
    probing = asyncio.create_task(lb.probe(probes_stop))
    try:
        await asyncio.to_thread(
            wait_until, lambda: all(b.ready for b in lb.backends), 30, "both APIs ready"
        )
        users = [
            sync_user(lb, "sync-slow", [SLOW, FAST], stop),
            sync_user(lb, "sync-fast", [FAST], stop),
            *[sync_user(lb, f"sync-long{i}", [LONG], stop) for i in range(4)],
            async_user(lb, "async", stop),
            async_user(lb, "webhook", stop, webhook_url=hook),
            sync_user(naive, "naive-sync", [FAST, SLOW], stop),
            sync_user(naive, "naive-long", [LONG], stop),
            async_user(naive, "naive-async", stop),
        ]
        load = asyncio.gather(*users)
        rolling = threading.Thread(target=rollout.run, args=(workers,), daemon=True)
        rolling.start()
        await asyncio.to_thread(rolling.join, 150)
        stop.set()
        sent_lists = await asyncio.wait_for(load, 120)
    finally:
        stop.set()
        probes_stop.set()
        await probing
        await lb.aclose()
        await naive.aclose()
    if rollout.error is not None:
        raise rollout.error
    sent = [one for found in sent_lists for one in found]
    summary = "\n".join(
        f"{name}: statuses {dict(b.seen.statuses)}, connection errors retried "
        f"{dict(b.seen.transport_errors)}, 503 retried {b.seen.retried_503}"
        for name, b in (("probing balancer", lb), ("passive balancer", naive))
    )
    summary = f"{len(sent)} tasks\n{summary}"
    print(summary)

    # no 5xx reached the client (a 503 with Retry-After is the documented retry path)
    assert lb.seen.server_errors == [] and naive.seen.server_errors == [], summary
    # every old process exited 0, the workers after finishing what they ran
    assert [(proc.name, code) for proc, code in rollout.old] == [
        (proc.name, 0) for proc, _ in rollout.old
    ]
    assert len(rollout.old) == 4 and len(rollout.mid_job) == 2
    for proc, _ in rollout.old[1::2]:  # the workers
        assert "worker.stopped" in proc.log_text()

    # every task has exactly its one final result, with its seed
    for one in sent:
        [item] = one.items
        assert item["taskUUID"] == one.task["taskUUID"], one.marker
        assert item["status"] == "success", (one.marker, item)
        assert item["seed"] == one.task["seed"] and item["text"], one.marker
    # each reached the upstream exactly once: nothing ran twice, nothing was lost
    async with httpx.AsyncClient(base_url=stack.sim_url) as sim:
        counts = {
            one.marker: (await sim.get("/_sim/calls", params={"contains": one.marker})).json()[
                "count"
            ]
            for one in sent
        }
    assert {m: c for m, c in counts.items() if c != 1} == {}, summary

    # each webhook task's result was delivered, under one webhook id
    hooked = [one for one in sent if "webhookURL" in one.task]
    assert hooked

    def delivered() -> bool:
        bodies = [json.loads(r.body)["data"][0]["taskUUID"] for r in receiver.requests("/rollout")]
        return all(one.task["taskUUID"] in bodies for one in hooked)

    await asyncio.to_thread(wait_until, delivered, 30, "every webhook delivered")
    ids: dict[str, set[str]] = {}
    for request in receiver.requests("/rollout"):
        [item] = json.loads(request.body)["data"]
        ids.setdefault(item["taskUUID"], set()).add(request.headers["webhook-id"])
        assert item["status"] == "success" and item["text"]
    assert all(len(ids[one.task["taskUUID"]]) == 1 for one in hooked)
