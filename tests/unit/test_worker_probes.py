"""The worker's probe server (worker/probes.py): liveness follows the loop's heartbeat, so a
stuck loop fails it although the probe thread still answers; readiness follows Redis,
startup and draining."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr

from worker.probes import ProbeServer, WorkerHealth


@pytest.fixture
def served() -> Iterator[tuple[WorkerHealth, str]]:
    health = WorkerHealth(liveness_timeout_s=0.2, beat_interval_s=0.01, redis_stale_s=5.0)
    server = ProbeServer("127.0.0.1", 0, health).start()
    yield health, f"http://127.0.0.1:{server.port}"
    server.stop()


def test_a_stuck_loop_fails_liveness_and_a_ticking_one_passes(
    served: tuple[WorkerHealth, str],
) -> None:
    health, url = served

    def livez() -> httpx.Response:  # blocking on purpose: called from the loop under test
        return httpx.get(f"{url}/livez")

    async def scenario() -> None:
        beat = asyncio.create_task(health.run())
        await asyncio.sleep(0.02)
        assert livez().status_code == 200
        # the loop is stuck: nothing on it runs, the heartbeat included
        time.sleep(0.4)  # noqa: ASYNC251
        stuck = livez()  # answered by the probe thread meanwhile
        assert stuck.status_code == 503
        assert stuck.json()["loopHeartbeatAgeS"] >= 0.2
        deadline = time.monotonic() + 5
        while livez().status_code != 200:  # ticking again
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        beat.cancel()

    asyncio.run(scenario())


def test_readiness_needs_startup_redis_and_no_drain(served: tuple[WorkerHealth, str]) -> None:
    health, url = served
    health.liveness_timeout_s = 60.0  # no loop beats here: judge readiness alone
    draining = False
    health.draining = lambda: draining

    def ready() -> httpx.Response:
        return httpx.get(f"{url}/readyz")

    response = ready()
    assert response.status_code == 503
    assert response.json()["checks"] == {
        "loop": "ok",
        "started": "starting",
        "redis": "unreachable",
        "shutdown": "no",
    }
    health.started = True
    health.redis_ok()
    assert ready().status_code == 200
    assert ready().json() | {"loopHeartbeatAgeS": 0} == {
        "status": "ok",
        "checks": {"loop": "ok", "started": "ok", "redis": "ok", "shutdown": "no"},
        "loopHeartbeatAgeS": 0,
    }
    health.redis_failed()
    assert ready().json()["checks"]["redis"] == "unreachable"
    health.redis_ok()
    assert ready().status_code == 200
    health.redis_ok_at = time.monotonic() - 6  # no successful round trip for too long
    assert ready().status_code == 503
    health.redis_ok()
    draining = True
    response = ready()
    assert response.status_code == 503 and response.json()["checks"]["shutdown"] == "draining"
    # liveness is not readiness: a draining worker is alive
    assert httpx.get(f"{url}/livez").status_code == 200
    assert httpx.get(f"{url}/nothing-here").status_code == 404


def test_metrics_behind_a_token_answer_only_the_bearer() -> None:
    health = WorkerHealth(liveness_timeout_s=1.0, beat_interval_s=0.01, redis_stale_s=5.0)
    server = ProbeServer("127.0.0.1", 0, health, SecretStr("scrape-me")).start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Basic scrape-me"}).status_code == 401
        allowed = httpx.get(url, headers={"Authorization": "Bearer scrape-me"})
        assert allowed.status_code == 200 and "python_info" in allowed.text
        # the probes stay open: the kubelet sends no token
        assert httpx.get(f"http://127.0.0.1:{server.port}/livez").status_code in (200, 503)
    finally:
        server.stop()
