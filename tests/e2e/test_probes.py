"""The probes end to end, through the image's own entry points: deploy/docker-entrypoint.sh
run with the Dockerfile's ENV (what `docker run IMAGE api|worker` does, without a container
daemon), against a real Redis and simulator.

API: /livez, /readyz (Redis, catalog, not draining) and /health; on SIGTERM /readyz answers
503 at once while everything else is still served for the shutdown delay, then the process
exits. Worker: its own /livez and /readyz on its own port; on SIGTERM it reports draining
while it finishes its running job, then exits. Both report Redis outages on /readyz only."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.settings import PROJECT_ROOT
from devenv.procs import Process, free_port, wait_until
from devenv.stack import Stack
from tests.conftest import KEY_A, StackFactory, text_task
from tests.deployfiles import DEPLOY, dockerfile_env

ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"
AUTH = {"Authorization": f"Bearer {KEY_A}"}


class Image:
    """The API and a worker started as the container would start them."""

    def __init__(self, stack: Stack):
        self.stack = stack
        env = stack.env()
        image_env = dockerfile_env()
        # the venv's python stands in for /opt/taskwire/bin; /app/deploy is the repository's
        image_env["PATH"] = (
            image_env["PATH"]
            .replace("/opt/taskwire/bin", str(PROJECT_ROOT / ".venv" / "bin"))
            .replace("${PATH}", env.get("PATH", "/usr/bin:/bin"))
        )
        image_env = {
            key: value.replace("/app/", f"{PROJECT_ROOT}/") for key, value in image_env.items()
        }
        env.update(image_env)
        # ports of its own, so tests beside it do not clash (PORT is honoured, as in the image)
        self.port, self.probe_port = free_port(), free_port()
        env["PORT"] = str(self.port)
        env["TASKWIRE_WORKER_HTTP_PORT"] = str(self.probe_port)
        self.env = env
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.worker_url = f"http://127.0.0.1:{self.probe_port}"
        self.api = self._run("image-api", "api")
        self.worker = self._run("image-worker", "worker")

    def _run(self, name: str, role: str) -> Process:
        return Process(name, ["sh", str(ENTRYPOINT), role], self.env, self.stack.log_dir).start()

    def wait_ready(self) -> None:
        for url, proc in ((self.api_url, self.api), (self.worker_url, self.worker)):
            wait_until(lambda url=url: status(f"{url}/readyz") == 200, 30, url, proc.check_alive)

    def stop(self) -> None:
        self.api.stop(timeout=20)
        self.worker.stop(timeout=40)


def status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def body(url: str) -> dict[str, Any]:
    response = httpx.get(url, timeout=2)
    result: dict[str, Any] = response.json()
    return result


@pytest.fixture
def image(make_stack: StackFactory) -> Iterator[Image]:
    started = Image(make_stack(workers=0))
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def test_probes_answer_and_sigterm_drains_the_worker_then_the_api(image: Image) -> None:
    api, worker = image.api_url, image.worker_url
    assert body(f"{api}/livez") == {"status": "ok"}
    assert body(f"{api}/readyz") == {
        "status": "ok",
        "checks": {"started": "ok", "shutdown": "no", "catalog": "ok", "redis": "ok"},
    }
    assert status(f"{api}/health") == 200
    assert status(f"{worker}/livez") == 200
    assert body(f"{worker}/readyz")["checks"] == {
        "loop": "ok",
        "started": "ok",
        "redis": "ok",
        "shutdown": "no",
    }

    # the worker: a running job keeps it draining (not ready, still alive), then it exits
    marker = uuid.uuid4().hex
    task = text_task(f"{marker} [[sim:tokens=30,tps=10]]", deliveryMethod="async")
    accepted = httpx.post(f"{api}/v1", json=[task], headers=AUTH, timeout=10)
    assert accepted.status_code == 200, accepted.text
    calls = f"{image.stack.sim_url}/_sim/calls"
    wait_until(
        lambda: httpx.get(calls, params={"contains": marker}).json()["count"] == 1,
        10,
        "the upstream call to start",
    )
    image.worker.signal(signal.SIGTERM)
    wait_until(lambda: status(f"{worker}/readyz") == 503, 5, "the worker to report draining")
    assert body(f"{worker}/readyz")["checks"]["shutdown"] == "draining"
    assert status(f"{worker}/livez") == 200
    assert image.worker.popen is not None
    assert image.worker.popen.wait(30) == 0

    def final() -> list[dict[str, Any]]:
        read = [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}]
        items: list[dict[str, Any]] = httpx.post(
            f"{api}/v1", json=read, headers=AUTH, timeout=10
        ).json()["data"]
        return items

    assert final()[0]["status"] == "success"  # finished by the draining worker

    # the API: not ready at once, everything else still served during the delay, then gone
    image.api.signal(signal.SIGTERM)
    wait_until(lambda: status(f"{api}/readyz") == 503, 2, "the API to report draining")
    assert body(f"{api}/readyz")["checks"]["shutdown"] == "draining"
    assert status(f"{api}/livez") == 200
    assert status(f"{api}/health") == 200
    assert final()[0]["status"] == "success"
    assert image.api.popen is not None
    delay = float(image.env["TASKWIRE_API_SHUTDOWN_DELAY_S"])
    image.api.popen.wait(delay + 15)
    assert status(f"{api}/livez") is None  # no longer listening


def test_redis_outage_makes_both_unready_but_alive(image: Image) -> None:
    redis_server = image.stack.redis_server
    assert redis_server is not None
    redis_server.stop()
    for url in (image.api_url, image.worker_url):
        wait_until(lambda url=url: status(f"{url}/readyz") == 503, 20, f"{url} unready")
        assert body(f"{url}/readyz")["checks"]["redis"] == "unreachable"
        assert status(f"{url}/livez") == 200
    redis_server.start()
    image.wait_ready()
