"""Several hosts on one machine: Redis, the simulator, the API, two workers and a client each
in a Linux network namespace of their own, joined by veth pairs to a bridge that lives in a
namespace of its own, on addresses that exist only inside those namespaces (the root
namespace's interfaces and addresses are never touched). Tasks run through them (sync and
async, with webhooks to a receiver in the client's namespace); then a worker running jobs is
cut off the network mid-task (its veth's bridge end set down: packets dropped, a partition,
not a crash). Its jobs complete on the other worker within a few leases; brought back, it
finds its lease lost and drops them: one result per task, recorded, announced and delivered
once.

The pytest process cannot reach the namespaces' addresses: the client namespace runs a small
proxy (CLIENT below) that takes JSON commands on stdin (HTTP calls, Redis commands, webhooks
received) and answers on stdout. Skipped where namespaces are not permitted."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import secrets
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.keys import Keys, TaskRef
from core.settings import Settings
from devenv.procs import Process, child_env, python_argv
from devenv.redis import REDIS_CONF
from tests.conftest import KEY_A, MODEL, TEST_SETTINGS, write_catalog

LEASE_S = 2.0
SLOW = "[[sim:tokens=40,tps=10]] Count slowly."  # about 4 s of streaming
SIM_KEY = "sim-multihost-key"
NODES = ("redis", "sim", "api", "w1", "w2", "client")
PORTS = {"redis": 6379, "sim": 8080, "api": 8000, "client": 9000}
_DEFAULTS = Settings.model_fields
KEYS = Keys(_DEFAULTS["key_prefix"].default, _DEFAULTS["queue_name"].default)

# The client namespace's proxy: one JSON command per stdin line, one JSON answer per line
# (matched by "id"), each command in a thread of its own so a sync wait does not block the
# rest. It also serves webhooks on its address and remembers what it received.
CLIENT = r"""
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import httpx, redis

host, port, redis_url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
hooks, lock, out = [], threading.Lock(), threading.Lock()

class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with lock:
            hooks.append({"id": self.headers.get("webhook-id"), "body": json.loads(body)})
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer((host, port), Hook)
threading.Thread(target=server.serve_forever, daemon=True).start()
store = redis.Redis.from_url(redis_url, socket_timeout=10)

def answer(cid, **fields):
    with out:
        sys.stdout.write(json.dumps({"id": cid, **fields}) + "\n")
        sys.stdout.flush()

def run(cmd):
    try:
        op = cmd["op"]
        if op == "http":
            deadline = time.monotonic() + cmd.get("retry_s", 0)
            while True:
                try:
                    r = httpx.request(cmd.get("method", "GET"), cmd["url"], json=cmd.get("json"),
                                      headers=cmd.get("headers"), timeout=cmd.get("timeout", 90))
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            try:
                body = r.json()
            except ValueError:
                body = r.text
            answer(cmd["id"], status=r.status_code, body=body)
        elif op == "redis":
            value = store.execute_command(*cmd["args"])
            answer(cmd["id"], value=_plain(value))
        elif op == "hooks":
            with lock:
                answer(cmd["id"], value=list(hooks))
    except Exception as exc:
        answer(cmd["id"], error=f"{type(exc).__name__}: {exc}")

def _plain(value):
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value

answer("ready")
for line in sys.stdin:
    threading.Thread(target=run, args=(json.loads(line),), daemon=True).start()
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


class Net:
    """Namespaces with unique names, one bridge (inside a namespace of its own) joining a
    veth per node, addresses in a /24 of 10/8 picked per run; always removed by close()."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.prefix = f"tw{tag}"
        self.bridge_ns = f"{self.prefix}-br"
        self.subnet = f"10.{random.randint(64, 250)}.{random.randint(1, 250)}"
        self.ns: dict[str, str] = {}
        self.addr: dict[str, str] = {}
        self.peer: dict[str, str] = {}  # the bridge end of each node's veth
        self._created: list[str] = []

    def build(self) -> None:
        self._add_ns(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for number, node in enumerate(NODES, start=1):
            ns = f"{self.prefix}-{node}"
            self._add_ns(ns)
            peer = f"v{number}"
            # made in the bridge's namespace, its other end moved straight into the node's:
            # nothing appears in the root namespace, even briefly
            _ip(
                "-n", self.bridge_ns, "link", "add", peer, "type", "veth",
                "peer", "name", "eth0", "netns", ns,
            )  # fmt: skip
            _ip("-n", self.bridge_ns, "link", "set", peer, "master", "br0")
            _ip("-n", self.bridge_ns, "link", "set", peer, "up")
            address = f"{self.subnet}.{number}"
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self.ns[node], self.addr[node], self.peer[node] = ns, address, peer

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)

    def cut(self, node: str) -> None:
        _ip("-n", self.bridge_ns, "link", "set", self.peer[node], "down")

    def restore(self, node: str) -> None:
        _ip("-n", self.bridge_ns, "link", "set", self.peer[node], "up")

    def exec_argv(self, node: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[node], *argv]

    def close(self) -> None:
        # deleting a namespace deletes its veth ends (and so their peers) and the bridge
        for name in reversed(self._created):
            _ip("netns", "del", name, check=False)
        self._created.clear()


def _namespaces_permitted() -> str | None:
    """Why this test cannot run here, or None."""
    if sys.platform != "linux" or shutil.which("ip") is None:
        return "needs Linux with iproute2 (ip netns)"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add)"
    probe = f"twprobe{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"network namespaces are not permitted here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Client:
    """The proxy in the client namespace: commands in, answers out, one thread reading."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path):
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        self._answers: dict[str, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait("ready", 30)

    def _queue(self, cid: str) -> queue.Queue[dict[str, Any]]:
        with self._lock:
            return self._answers.setdefault(cid, queue.Queue())

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            self._queue(message["id"]).put(message)

    def _wait(self, cid: str, timeout: float) -> dict[str, Any]:
        try:
            message = self._queue(cid).get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the client proxy did not answer {cid} in {timeout} s") from None
        if "error" in message:
            raise RuntimeError(f"client proxy: {message['error']}")
        return message

    def send(self, command: dict[str, Any]) -> Callable[[float], dict[str, Any]]:
        """Start a command; returns a function that waits for its answer."""
        cid = uuid.uuid4().hex
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": cid, **command}) + "\n")
        self.proc.stdin.flush()
        return lambda timeout: self._wait(cid, timeout)

    def call(self, command: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        return self.send(command)(timeout)

    def redis(self, *args: Any) -> Any:
        return self.call({"op": "redis", "args": list(args)})["value"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def net() -> Iterator[Net]:
    reason = _namespaces_permitted()
    if reason is not None:
        pytest.skip(reason)
    network = Net()
    try:
        network.build()
        yield network
    finally:
        network.close()


def test_a_worker_cut_off_mid_task_loses_its_jobs_to_the_other_and_never_doubles_a_result(
    net: Net, tmp_path: Path, redis_binary: str
) -> None:
    a = net.addr
    redis_url = f"redis://{a['redis']}:{PORTS['redis']}/0"
    catalog = write_catalog(tmp_path, timeout_s=60.0)
    env = child_env(
        {
            **TEST_SETTINGS,
            "TASKWIRE_REDIS_URL": redis_url,
            "TASKWIRE_API_KEYS": KEY_A,
            "TASKWIRE_SIM_URL": f"http://{a['sim']}:{PORTS['sim']}/v1",
            "TASKWIRE_SIM_API_KEY": SIM_KEY,
            "TASKWIRE_CATALOG_PATH": str(catalog),
            "TASKWIRE_LOG_FORMAT": "json",
            "TASKWIRE_JOB_LEASE_S": str(LEASE_S),
            # the webhook receiver is in the client namespace, on a private address
            "TASKWIRE_OUTBOUND_ALLOW_CIDRS": f"{net.subnet}.0/24",
        }
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[Process] = []
    client: Client | None = None

    def start(
        node: str, name: str, argv: list[str], extra: dict[str, str] | None = None
    ) -> Process:
        proc = Process(name, net.exec_argv(node, argv), {**env, **(extra or {})}, logs).start()
        procs.append(proc)
        return proc

    try:
        start(
            "redis",
            "redis",
            [
                redis_binary, str(REDIS_CONF), "--port", str(PORTS["redis"]),
                "--bind", a["redis"], "--dir", str(tmp_path), "--daemonize", "no",
                "--protected-mode", "no", "--appendonly", "no", "--save", "",
            ],
        )  # fmt: skip
        sim = start(
            "sim",
            "sim",
            python_argv(
                "-m", "sim", "--host", a["sim"], "--port", str(PORTS["sim"]),
                f"--api-key={SIM_KEY}",
            ),
        )  # fmt: skip
        workers = {node: start(node, node, python_argv("-m", "worker")) for node in ("w1", "w2")}
        api = start(
            "api",
            "api",
            python_argv("-m", "service"),
            {"HOST": a["api"], "PORT": str(PORTS["api"])},
        )
        client = Client(
            net.exec_argv(
                "client",
                python_argv("-c", CLIENT, a["client"], str(PORTS["client"]), redis_url),
            ),
            env,
            logs / "client.log",
        )
        api_url = f"http://{a['api']}:{PORTS['api']}"

        def alive() -> None:
            for proc in procs:
                proc.check_alive()

        # everything up: the API and simulator answer, both workers registered
        for url in (f"{api_url}/readyz", f"http://{a['sim']}:{PORTS['sim']}/health"):
            ready = client.call({"op": "http", "url": url, "retry_s": 40, "timeout": 5}, 60)
            assert ready["status"] == 200, ready
        worker_key = {node: f"{KEYS.workers}:*:{proc.pid}" for node, proc in workers.items()}

        def running(node: str) -> int:
            found = client.redis("KEYS", worker_key[node])
            return int(client.redis("GET", found[0]) or 0) if found else -1

        _wait(lambda: min(running(n) for n in workers) >= 0, 40, "both workers to register")
        alive()

        hook_url = f"http://{a['client']}:{PORTS['client']}/hook"
        auth = {"Authorization": f"Bearer {KEY_A}"}

        def post(tasks: list[dict[str, Any]]) -> Callable[[float], dict[str, Any]]:
            return client.send(
                {"op": "http", "method": "POST", "url": f"{api_url}/v1", "json": tasks,
                 "headers": auth}
            )  # fmt: skip

        def task(prompt: str, delivery: str) -> dict[str, Any]:
            return {
                "taskType": "textInference",
                "taskUUID": str(uuid.uuid4()),
                "model": MODEL,
                "messages": [{"role": "user", "content": prompt}],
                "deliveryMethod": delivery,
                "webhookURL": hook_url,
            }

        def results(task_uuid: str) -> list[dict[str, Any]]:
            answer = post([{"taskType": "getResponse", "taskUUID": task_uuid}])(60)
            assert answer["status"] == 200, answer
            return list(answer["body"]["data"])

        def finished(uuids: list[str]) -> bool:
            return all(item["status"] != "processing" for u in uuids for item in results(u))

        # --- through the hosts: sync and async
        first_sync, first_async = task("Say hello", "sync"), task("Say hi", "async")
        sync_answer = post([first_sync])(90)
        assert sync_answer["status"] == 200, sync_answer
        assert sync_answer["body"]["data"][0]["status"] == "success"
        assert post([first_async])(60)["status"] in (200, 202)
        _wait(lambda: finished([first_async["taskUUID"]]), 60, "the async task")
        assert results(first_async["taskUUID"])[0]["status"] == "success"

        # --- slow tasks; cut off a worker while it runs some
        slow = [task(SLOW, "async") for _ in range(4)]
        slow_sync = task(SLOW, "sync")
        submitted = post(slow)(60)
        assert submitted["status"] in (200, 202), submitted
        sync_wait = post([slow_sync])
        uuids = [t["taskUUID"] for t in [*slow, slow_sync]]
        _wait(lambda: max(running(n) for n in workers) >= 1, 30, "a worker to start jobs")
        victim = max(workers, key=running)
        survivor = "w2" if victim == "w1" else "w1"
        net.cut(victim)
        cut_at = time.monotonic()

        # the victim's jobs complete on the survivor (within a few leases of the cut, plus
        # the slow prompt's own few seconds)
        _wait(lambda: finished(uuids), 8 * LEASE_S + 30, "the cut-off worker's jobs elsewhere")
        took = time.monotonic() - cut_at
        items = {u: results(u) for u in uuids}
        assert all(i["status"] == "success" for u in uuids for i in items[u]), items
        synced = sync_wait(90)
        assert synced["status"] in (200, 202), synced
        finals = {u: _final_events(client, u) for u in uuids}
        taken_over = [u for u in uuids if finals[u][0]["a"] > 1]
        assert taken_over, f"no task was run again after the cut: {finals}"

        # --- back on the network: the victim finds its lease lost and drops its jobs
        net.restore(victim)
        victim_log = workers[victim]

        def lost_lines() -> list[dict[str, Any]]:
            return [
                line
                for line in _json_lines(victim_log.log_text())
                if str(line.get("event", "")).endswith("lease_lost")
            ]

        _wait(lambda: bool(lost_lines()), 60, f"{victim} to find its lease lost")
        _wait(lambda: running(victim) == 0, 30, f"{victim} to drop its jobs")
        time.sleep(LEASE_S)  # anything it might still write would have landed by now
        alive()

        # one result per task: in getResponse, the record's count, the stream and webhooks
        for u in uuids:
            assert [i["status"] for i in results(u)] == ["success"]
            ref = TaskRef(_owner(client), u)
            record = client.redis("HMGET", KEYS.task(ref), "done", "n")
            assert record == ["1", "1"], (u, record)
            events = _final_events(client, u)
            assert len(events) == 1 and events == finals[u], (u, events)
        hooks = client.call({"op": "hooks"})["value"]
        delivered: dict[str, int] = {}
        for hook in hooks:
            for item in hook["body"]["data"]:
                delivered[item["taskUUID"]] = delivered.get(item["taskUUID"], 0) + 1
        all_uuids = [*uuids, first_sync["taskUUID"], first_async["taskUUID"]]
        assert delivered == dict.fromkeys(all_uuids, 1), delivered
        assert client.redis("HLEN", KEYS.queue_prefix + "holders") == 0
        assert client.redis("ZCARD", KEYS.queue_prefix + "leases") == 0
        survivor_log = workers[survivor].log_text()
        assert "result.finished" in survivor_log
        print(f"multihost: {victim} cut off; its jobs done elsewhere {took:.1f} s after the cut")
        del sim, api
    finally:
        if client is not None:
            client.close()
        for proc in reversed(procs):
            proc.stop(timeout=10)


_OWNER: dict[str, str] = {}


def _owner(client: Client) -> str:
    """The owner id API key KEY_A's tasks are stored under (read from the task index)."""
    if "owner" not in _OWNER:
        [index] = client.redis("KEYS", KEYS.task_index("*")) or [""]
        _OWNER["owner"] = index.rsplit(":", 1)[-1]
    return _OWNER["owner"]


def _final_events(client: Client, task_uuid: str) -> list[dict[str, Any]]:
    ref = TaskRef(_owner(client), task_uuid)
    entries = client.redis("XRANGE", KEYS.events(ref), "-", "+")
    stored = [json.loads(fields["d"]) for _id, fields in entries]
    return [event for event in stored if event.get("t") == "f"]


def _json_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict):
                yield parsed
