"""Upstream failures, time-outs and crashes, driven through the whole stack."""

from __future__ import annotations

import signal
import uuid

import httpx
import redis

from devenv.procs import wait_until
from sim.app import UPSTREAM_SECRET_MARKER
from tests.conftest import (
    Api,
    StackFactory,
    log_lines,
    text_task,
    wait_for_log,
    without_stream_url,
)


def sim_calls(stack, marker: str) -> int:
    return int(
        httpx.get(f"{stack.sim_url}/_sim/calls", params={"contains": marker}).json()["count"]
    )


def sim_stats(stack) -> dict:
    return dict(httpx.get(f"{stack.sim_url}/_sim/stats").json())


def attempts_logged(stack, task_uuid: str) -> list[dict]:
    return wait_for_log(
        stack.workers[0].log_path,
        lambda line: line.get("event") == "result.finished" and line.get("task_uuid") == task_uuid,
    )


def test_rate_limited_twice_then_success(api: Api, stack) -> None:
    marker = uuid.uuid4().hex
    task = text_task(f"{marker} [[sim:status=429,retry_after=0,fail=2]]")
    [item] = api.post([task]).json()["data"]
    assert item["status"] == "success", item
    assert sim_calls(stack, marker) == 3
    [line] = attempts_logged(stack, task["taskUUID"])
    assert line["attempts"] == 3


def test_retry_after_is_honoured(api: Api, stack) -> None:
    marker = uuid.uuid4().hex
    task = text_task(f"{marker} [[sim:status=503,retry_after=1,fail=1]]")
    [item] = api.post([task]).json()["data"]
    assert item["status"] == "success"
    [failed] = wait_for_log(
        stack.workers[0].log_path,
        lambda line: (
            line.get("event") == "upstream.attempt_failed"
            and line.get("task_uuid") == task["taskUUID"]
        ),
    )
    assert failed["http_status"] == 503
    assert failed["retry_in_s"] >= 1.0


def test_upstream_that_always_fails_ends_in_an_error_result(api: Api, stack) -> None:
    marker = uuid.uuid4().hex
    task = text_task(f"{marker} [[sim:status=500]]", numberResults=2)
    response = api.post([task])
    assert response.status_code == 200
    items = response.json()["data"]
    for index, item in enumerate(items):
        assert item == {
            "taskType": "textInference",
            "taskUUID": task["taskUUID"],
            "resultIndex": index,
            "status": "error",
            "error": {"code": "inferenceError", "message": item["error"]["message"]},
        }
        assert UPSTREAM_SECRET_MARKER not in item["error"]["message"]
        assert "HTTP 500" in item["error"]["message"]
    assert sim_calls(stack, marker) == 2 * 3  # three attempts per result (the test setting)
    # still pollable, still an error
    assert without_stream_url(api.get_response(task["taskUUID"]).json()["data"]) == items


def test_rate_limit_that_never_lifts_is_provider_rate_limit(api: Api, stack) -> None:
    marker = uuid.uuid4().hex
    [item] = api.post([text_task(f"{marker} [[sim:status=429,retry_after=0]]")]).json()["data"]
    assert item["status"] == "error"
    assert item["error"]["code"] == "providerRateLimit"
    assert UPSTREAM_SECRET_MARKER not in item["error"]["message"]
    assert sim_calls(stack, marker) == 3


def test_retry_after_beyond_the_cap_gives_up_at_once(api: Api, stack) -> None:
    marker = uuid.uuid4().hex
    [item] = api.post([text_task(f"{marker} [[sim:status=429,retry_after=120]]")]).json()["data"]
    assert item["error"]["code"] == "providerRateLimit"
    assert sim_calls(stack, marker) == 1


def test_rejected_credentials_are_not_retried_and_not_leaked(api: Api, stack) -> None:
    marker = uuid.uuid4().hex
    [item] = api.post([text_task(f"{marker} [[sim:status=401]]")]).json()["data"]
    assert item["error"]["code"] == "inferenceError"
    assert "credentials" in item["error"]["message"]
    assert UPSTREAM_SECRET_MARKER not in item["error"]["message"]
    assert "sim-secret-key" not in item["error"]["message"]
    assert sim_calls(stack, marker) == 1


def test_hanging_upstream_times_out(api: Api, stack) -> None:
    marker = uuid.uuid4().hex
    [item] = api.post([text_task(f"{marker} [[sim:hang]]")]).json()["data"]
    assert item["status"] == "error"
    assert item["error"]["code"] == "timeoutProvider"
    assert sim_calls(stack, marker) == 3


def test_connection_dropped_mid_stream_is_retried(api: Api, stack) -> None:
    marker = uuid.uuid4().hex
    [item] = api.post([text_task(f"{marker} [[sim:drop_after=3,fail=1]]", seed=9)]).json()["data"]
    assert item["status"] == "success"
    assert len(item["text"].split()) == 24  # the whole answer, from the retry
    assert sim_calls(stack, marker) == 2


def test_upstream_unreachable(make_stack: StackFactory) -> None:
    stack = make_stack()
    assert stack.sim is not None
    stack.sim.stop()
    api = Api(stack)
    [item] = api.post([text_task("nobody home")]).json()["data"]
    assert item["status"] == "error"
    assert item["error"]["code"] == "noAvailableServer"
    api.close()


def test_sync_wait_times_out_with_202_and_the_task_completes(make_stack: StackFactory) -> None:
    stack = make_stack(env={"TASKWIRE_SYNC_TIMEOUT_S": "1"}, upstream_timeout_s=10)
    api = Api(stack)
    task = text_task("slow [[sim:ttft=2500]]", numberResults=2)
    response = api.post([task])
    assert response.status_code == 202
    pending = response.json()["data"]
    assert without_stream_url(pending) == [
        {
            "taskType": "textInference",
            "taskUUID": task["taskUUID"],
            "resultIndex": i,
            "status": "processing",
        }
        for i in range(2)
    ]
    assert all(item["links"]["stream"].startswith(stack.api_url) for item in pending)
    items = api.wait_final(task["taskUUID"], timeout=30)
    assert [item["status"] for item in items] == ["success", "success"]
    # re-submitting the same sync task now answers at once with the results
    again = api.post([task])
    assert again.status_code == 200
    assert again.json()["data"] == without_stream_url(items)
    api.close()


def test_worker_killed_mid_task_finishes_on_another_worker(make_stack: StackFactory) -> None:
    # A long job timeout: recovery must not wait for it (leases are 10 s by default).
    stack = make_stack(env={"TASKWIRE_JOB_TIMEOUT_S": "3600"})
    api = Api(stack)
    marker = uuid.uuid4().hex
    task = text_task(f"{marker} [[sim:tokens=40,tps=8]]", deliveryMethod="async", seed=21)
    api.post([task])
    wait_until(lambda: sim_calls(stack, marker) == 1, 10, "the upstream call to start")
    first = stack.workers[0]
    first.kill()  # SIGKILL: no cleanup, the in-progress key stays until its lease lapses
    stack.start_worker()
    items = api.wait_final(task["taskUUID"], timeout=30)
    assert items[0]["status"] == "success"
    assert len(items[0]["text"].split()) == 40
    assert items[0]["seed"] == 21
    assert sim_calls(stack, marker) == 2
    [line] = wait_for_log(
        stack.workers[1].log_path,
        lambda line: (
            line.get("event") == "result.finished" and line.get("task_uuid") == task["taskUUID"]
        ),
    )
    assert line["job_try"] == 2
    api.close()


def test_sigterm_lets_running_jobs_finish(make_stack: StackFactory) -> None:
    stack = make_stack()
    api = Api(stack)
    marker = uuid.uuid4().hex
    task = text_task(f"{marker} [[sim:tokens=20,tps=10]]", deliveryMethod="async")
    api.post([task])
    wait_until(lambda: sim_calls(stack, marker) == 1, 10, "the upstream call to start")
    worker = stack.workers[0]
    worker.signal(signal.SIGTERM)
    assert worker.popen is not None
    assert worker.popen.wait(30) == 0
    items = api.wait_final(task["taskUUID"], timeout=5)
    assert items[0]["status"] == "success"
    assert sim_calls(stack, marker) == 1  # finished by the stopping worker, not re-run
    api.close()


def test_sigterm_past_the_grace_period_hands_the_job_back(make_stack: StackFactory) -> None:
    stack = make_stack(env={"TASKWIRE_WORKER_SHUTDOWN_GRACE_S": "1"})
    api = Api(stack)
    marker = uuid.uuid4().hex
    task = text_task(f"{marker} [[sim:tokens=30,tps=10]]", deliveryMethod="async")
    api.post([task])
    wait_until(lambda: sim_calls(stack, marker) == 1, 10, "the upstream call to start")
    stack.workers[0].signal(signal.SIGTERM)
    assert stack.workers[0].popen is not None
    stack.workers[0].popen.wait(30)
    stack.start_worker()
    # handed back at once (not after the lease): the new worker picks it up and finishes
    items = api.wait_final(task["taskUUID"], timeout=15)
    assert items[0]["status"] == "success"
    assert sim_calls(stack, marker) == 2
    api.close()


def test_redis_restart_worker_and_api_keep_serving(make_stack: StackFactory) -> None:
    stack = make_stack()
    api = Api(stack)
    assert api.post([text_task("before")]).json()["data"][0]["status"] == "success"
    # an accepted task waiting in the queue survives the restart (append-only file)
    stack.workers[0].signal(signal.SIGSTOP)
    queued = text_task("queued across the restart", deliveryMethod="async")
    assert api.post([queued]).status_code == 200
    assert stack.redis_server is not None
    stack.redis_server.restart()
    stack.workers[0].signal(signal.SIGCONT)
    # the worker reconnects (it does not exit) and the queued task completes
    items = api.wait_final(queued["taskUUID"], timeout=30)
    assert items[0]["status"] == "success"
    assert stack.workers[0].running()
    # and new work flows through the same processes
    response = api.post([text_task("after")])
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["status"] == "success"
    api.close()


def test_redis_down_gives_503_then_recovers(make_stack: StackFactory) -> None:
    stack = make_stack()
    api = Api(stack)
    assert stack.redis_server is not None
    stack.redis_server.stop()
    response = api.post([text_task("while down")])
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json()["errors"][0]["code"] == "serviceUnavailable"
    stack.redis_server.start()
    wait_until(lambda: api.post([text_task("back")]).status_code == 200, 30, "recovery")
    assert stack.workers[0].running()
    api.close()


def test_task_in_flight_during_a_redis_restart_completes(make_stack: StackFactory) -> None:
    stack = make_stack()
    api = Api(stack)
    marker = uuid.uuid4().hex
    task = text_task(f"{marker} [[sim:tokens=20,tps=10]]", deliveryMethod="async")
    api.post([task])
    wait_until(lambda: sim_calls(stack, marker) == 1, 10, "the upstream call to start")
    assert stack.redis_server is not None
    stack.redis_server.restart()
    items = api.wait_final(task["taskUUID"], timeout=40)
    assert items[0]["status"] == "success"
    assert len(items[0]["text"].split()) == 20
    client = redis.Redis.from_url(stack.redis_url)
    assert client.zcard("tw:q:leases") == 0  # nothing left behind
    assert client.zcard("tw:q:delayed") == 0
    assert all(int(v) == 0 for v in client.hvals("tw:q:depth"))
    client.close()
    api.close()


def test_answers_finished_during_a_redis_outage_are_kept(make_stack: StackFactory) -> None:
    """Answers that finish while Redis is down are recorded when it is back: route-health
    bookkeeping never costs a finished answer (no second upstream call, no try spent)."""
    stack = make_stack(upstream_timeout_s=30)
    api = Api(stack)
    marker = uuid.uuid4().hex
    tasks = [
        text_task(f"{marker} [[sim:tokens=24,tps=6]]", deliveryMethod="async", numberResults=4)
        for _ in range(5)
    ]
    assert api.post(tasks).status_code == 200
    wait_until(lambda: sim_calls(stack, marker) == 20, 20, "every upstream call to start")
    assert stack.redis_server is not None
    stack.redis_server.stop()
    # Redis stays down until every upstream answer has finished (about four seconds).
    wait_until(lambda: sim_stats(stack)["in_flight"] == 0, 30, "the answers to finish")
    stack.redis_server.start()
    for task in tasks:
        items = api.wait_final(task["taskUUID"], timeout=40)
        assert [item["status"] for item in items] == ["success"] * 4, items
        assert all(len(item["text"].split()) == 24 for item in items)
    assert sim_calls(stack, marker) == 20  # each answer was paid for once
    finished = log_lines(stack.workers[0].log_path, "result.finished")
    assert sorted(line["job_try"] for line in finished) == [1] * 20
    api.close()
