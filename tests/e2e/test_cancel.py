"""Cancelling and deadlines end to end: taskCancel / DELETE on queued, running and final
results of every delivery method, cancelAfter, and cancelOnDisconnect, against the real
API, worker and simulator (which shows whether an upstream stream was closed)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from devenv.procs import wait_until
from devenv.stack import Stack
from tests.conftest import KEY_A, KEY_B, Api, text_task
from tests.receiver import Receiver, running_receiver

# One result at a time per key: a slow task keeps the next one of its key queued.
CANCEL_ENV = {
    "TASKWIRE_KEY_MAX_RUNNING": "1",
    "TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8,::1/128",
    "TASKWIRE_WEBHOOK_SCHEDULE_S": "0,0.3",
    "TASKWIRE_WEBHOOK_JITTER": "0",
}
# A second route for the test model (the simulator's Responses API): a stopped result must
# not fall back to it.
FALLBACK_ROUTE = """
[[models."openai:gpt@5.4-mini".routes]]
name = "fallback"
adapter = "openai-responses"
base_url = "${TASKWIRE_SIM_URL}"
model = "gpt-5.4-mini"
api_key_env = "TASKWIRE_SIM_API_KEY"
timeout_s = 2.0
"""
SLOW = "[[sim:tokens=80,tps=10]]"  # eight seconds of output, a token every 0.1 s


@pytest.fixture(scope="module")
def cancel_stack(tmp_path_factory: pytest.TempPathFactory, redis_binary: str) -> Iterator[Stack]:
    from devenv.stack import StackConfig
    from tests.conftest import TEST_SETTINGS, write_catalog

    root = tmp_path_factory.mktemp("cancel")
    catalog = write_catalog(root)
    catalog.write_text(catalog.read_text() + FALLBACK_ROUTE)
    stack = Stack(
        StackConfig(
            root=root,
            api_keys=[KEY_A, KEY_B],
            catalog_path=catalog,
            env={**TEST_SETTINGS, **CANCEL_ENV},
        )
    ).start()
    yield stack
    stack.stop()


@pytest.fixture
def api(cancel_stack: Stack) -> Iterator[Api]:
    client = Api(cancel_stack)
    yield client
    client.close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


def marker() -> str:
    return f"m{time.monotonic_ns()}"


def sim_calls(api: Api, needle: str) -> int:
    count: int = httpx.get(f"{api.stack.sim_url}/_sim/calls", params={"contains": needle}).json()[
        "count"
    ]
    return count


def sim_in_flight(api: Api) -> int:
    value: int = httpx.get(f"{api.stack.sim_url}/_sim/stats").json()["in_flight"]
    return value


def cancel(api: Api, task_uuid: str, key: str = KEY_A) -> httpx.Response:
    return api.post([{"taskType": "taskCancel", "taskUUID": task_uuid}], key=key)


def statuses(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["status"] for item in response.json()["data"]]


def error_codes(items: list[dict[str, Any]]) -> list[str | None]:
    return [item.get("error", {}).get("code") for item in items]


def started(api: Api, needle: str) -> None:
    wait_until(lambda: sim_calls(api, needle) >= 1, 10, "the upstream call to start")


def test_a_queued_result_never_starts(api: Api) -> None:
    blocker, queued = marker(), marker()
    first = text_task(f"{blocker} {SLOW}", deliveryMethod="async")
    second = text_task(f"{queued} hello", deliveryMethod="async", numberResults=2)
    assert api.post([first]).status_code == 200
    started(api, blocker)
    assert api.post([second]).status_code == 200
    answer = cancel(api, second["taskUUID"])
    assert statuses(answer) == ["cancelled", "cancelled"]
    assert [item["taskType"] for item in answer.json()["data"]] == ["taskCancel"] * 2
    items = api.get_response(second["taskUUID"]).json()["data"]
    assert [item["status"] for item in items] == ["error", "error"]
    assert error_codes(items) == ["taskCancelled", "taskCancelled"]
    assert statuses(cancel(api, first["taskUUID"])) == ["cancelled"]
    assert sim_calls(api, queued) == 0  # and the blocker's slot is free again:
    after = text_task("after the cancels")
    assert api.post([after]).json()["data"][0]["status"] == "success"
    assert sim_calls(api, queued) == 0


def test_a_running_stream_stops_within_half_a_second(api: Api) -> None:
    needle = marker()
    task = text_task(f"{needle} {SLOW}", deliveryMethod="stream")
    headers = {"Authorization": f"Bearer {KEY_A}"}
    events: list[Any] = []
    with api.http.stream("POST", "/v1", json=[task], headers=headers) as stream:
        lines = stream.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                if len(events) == 3:
                    break
        sent = time.monotonic()
        response = api.http.delete(f"/v1/tasks/{task['taskUUID']}", headers=headers)
        answered = time.monotonic() - sent
        assert statuses(response) == ["cancelled"]
        for line in lines:
            if line.startswith("data: "):
                events.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
    assert answered < 0.5, answered  # the worker stopped and recorded it in that time
    wait_until(lambda: sim_in_flight(api) == 0, 0.5, "the upstream stream to close")
    assert events[-1] == "[DONE]"
    assert events[-2]["errors"][0]["code"] == "taskCancelled"
    assert all("delta" in event for event in events[:-2])
    text = "".join(event["delta"].get("text", "") for event in events[:-2])
    assert 0 < len(text.split()) < 40  # stopped part-way through 80 tokens
    time.sleep(0.3)  # an absence: no fallback or retry may start after the stop
    assert sim_calls(api, needle) == 1


def test_a_running_sync_task_answers_with_the_cancelled_result(api: Api) -> None:
    needle = marker()
    task = text_task(f"{needle} {SLOW}")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(api.post, [task])
        started(api, needle)
        assert statuses(cancel(api, task["taskUUID"])) == ["cancelled"]
        response = waiting.result(timeout=5)
    assert response.status_code == 200
    assert error_codes(response.json()["data"]) == ["taskCancelled"]
    wait_until(lambda: sim_in_flight(api) == 0, 0.5, "the upstream stream to close")


def test_cancelled_results_are_delivered_to_the_webhook(api: Api, receiver: Receiver) -> None:
    url = receiver.answer("/cancelled")
    running, queued = marker(), marker()
    first = text_task(f"{running} {SLOW}", deliveryMethod="async", webhookURL=url)
    second = text_task(f"{queued} hi", deliveryMethod="async", webhookURL=url)
    assert api.post([first]).status_code == 200
    started(api, running)
    assert api.post([second]).status_code == 200
    assert statuses(cancel(api, second["taskUUID"])) == ["cancelled"]
    assert statuses(cancel(api, first["taskUUID"])) == ["cancelled"]
    wait_until(lambda: len(receiver.requests("/cancelled")) == 2, 10, "two deliveries")
    delivered = {
        item["taskUUID"]: item
        for request in receiver.requests("/cancelled")
        for item in json.loads(request.body)["data"]
    }
    assert error_codes([delivered[first["taskUUID"]], delivered[second["taskUUID"]]]) == [
        "taskCancelled",
        "taskCancelled",
    ]


def test_final_results_are_kept_and_cancelling_again_answers_the_same(api: Api) -> None:
    task = text_task("short and done")
    assert api.post([task]).json()["data"][0]["status"] == "success"
    assert statuses(cancel(api, task["taskUUID"])) == ["alreadyFinal"]
    assert api.get_response(task["taskUUID"]).json()["data"][0]["status"] == "success"
    slow = text_task(f"{marker()} {SLOW}", deliveryMethod="async")
    api.post([slow])
    first = cancel(api, slow["taskUUID"]).json()
    again = api.http.delete(
        f"/v1/tasks/{slow['taskUUID'].upper()}", headers={"Authorization": f"Bearer {KEY_A}"}
    )
    assert statuses(again) == [item["status"] for item in first["data"]] == ["cancelled"]


def test_another_keys_task_is_not_found(api: Api) -> None:
    task = text_task(f"{marker()} {SLOW}", deliveryMethod="async")
    api.post([task])
    response = cancel(api, task["taskUUID"], key=KEY_B)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "taskFailedOrNotFound"
    deleted = api.http.delete(
        f"/v1/tasks/{task['taskUUID']}", headers={"Authorization": f"Bearer {KEY_B}"}
    )
    assert deleted.status_code == 404
    assert api.get_response(task["taskUUID"]).json()["data"][0]["status"] == "processing"
    assert statuses(cancel(api, task["taskUUID"])) == ["cancelled"]


def test_a_deadline_passed_in_the_queue_means_no_upstream_call(api: Api) -> None:
    blocker, late = marker(), marker()
    first = text_task(f"{blocker} {SLOW}", deliveryMethod="async")
    second = text_task(f"{late} hi", deliveryMethod="async", cancelAfter=0.3)
    api.post([first])
    started(api, blocker)
    api.post([second])
    time.sleep(0.4)  # the deadline itself is what this test waits out
    cancel(api, first["taskUUID"])
    items = api.wait_final(second["taskUUID"], timeout=10)
    assert error_codes(items) == ["taskExpired"]
    assert sim_calls(api, late) == 0


def test_a_deadline_stops_a_running_result(api: Api) -> None:
    needle = marker()
    task = text_task(f"{needle} {SLOW}", deliveryMethod="async", cancelAfter=1)
    submitted = time.monotonic()
    api.post([task])
    items = api.wait_final(task["taskUUID"], timeout=10)
    assert error_codes(items) == ["taskExpired"]
    assert time.monotonic() - submitted < 2.5
    wait_until(lambda: sim_in_flight(api) == 0, 0.5, "the upstream stream to close")
    assert sim_calls(api, needle) == 1


@pytest.mark.parametrize("opted_in", [True, False])
def test_a_stream_client_leaving(api: Api, opted_in: bool) -> None:
    task = text_task(
        f"{marker()} [[sim:tokens=20,tps=10]]", deliveryMethod="stream", cancelOnDisconnect=opted_in
    )
    headers = {"Authorization": f"Bearer {KEY_A}"}
    with api.http.stream("POST", "/v1", json=[task], headers=headers) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: {"):
                break  # the first delta: then the client goes away
    items = api.wait_final(task["taskUUID"], timeout=10)
    assert error_codes(items) == (["taskCancelled"] if opted_in else [None])


@pytest.mark.parametrize("opted_in", [True, False])
def test_a_sync_client_leaving(api: Api, opted_in: bool) -> None:
    needle = marker()
    task = text_task(f"{needle} [[sim:tokens=20,tps=10]]", cancelOnDisconnect=opted_in)
    with pytest.raises(httpx.ReadTimeout):
        api.post([task], timeout=httpx.Timeout(10, read=0.5))
    items = api.wait_final(task["taskUUID"], timeout=10)
    assert error_codes(items) == (["taskCancelled"] if opted_in else [None])


def test_bad_cancel_requests(api: Api) -> None:
    unknown = cancel(api, text_task()["taskUUID"])
    assert unknown.status_code == 404
    assert unknown.json()["errors"][0]["code"] == "taskFailedOrNotFound"
    bad = api.http.delete("/v1/tasks/nope", headers={"Authorization": f"Bearer {KEY_A}"})
    assert bad.status_code == 400
    assert api.http.delete(f"/v1/tasks/{text_task()['taskUUID']}").status_code == 401
    for fields in ({"cancelAfter": 0}, {"cancelAfter": 86_401}, {"cancelOnDisconnect": 1}):
        response = api.post([text_task(**fields)])
        assert response.status_code == 400
        assert response.json()["errors"][0]["parameter"] == next(iter(fields))
    refused = api.post([text_task(deliveryMethod="async", cancelOnDisconnect=True)])
    assert refused.json()["errors"][0]["code"] == "invalidCancelOnDisconnect"
