"""The shared queue's depth limit against per-key quotas, over two API processes and two
workers: webhook deliveries waiting to retry are not backlog, and a key's own quota binds
before the global depth does, so no key can fill the queue for everyone."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from devenv.procs import wait_until
from devenv.stack import Stack, StackConfig
from service.auth import key_digest, owner_id
from tests.conftest import KEY_A, KEY_B, TEST_SETTINGS, Api, text_task, write_catalog
from tests.receiver import Receiver, running_receiver

KEY_C = "tw-test-key-c-5555555555"
SLOW_PROMPT = "[[sim:tokens=20,tps=5]] take your time"  # about four seconds a result
MAX_DEPTH = 4


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_binary: str) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("queue-limits")
    limits = {owner_id(key_digest(KEY_A)): {"max_queued": 2, "max_running": 1}}
    shared = Stack(
        StackConfig(
            root=root,
            api_keys=[KEY_A, KEY_B, KEY_C],
            catalog_path=write_catalog(root),
            env={
                **TEST_SETTINGS,
                "TASKWIRE_MAX_QUEUE_DEPTH": str(MAX_DEPTH),
                "TASKWIRE_KEY_LIMITS": json.dumps(limits),
                "TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8",
                # the first attempt at once, the retry a minute later: it waits, scheduled
                "TASKWIRE_WEBHOOK_SCHEDULE_S": "0,60",
                "TASKWIRE_WEBHOOK_JITTER": "0",
                "TASKWIRE_WEBHOOK_TIMEOUT_S": "1",
            },
        )
    ).start(workers=2)
    shared.start_api()
    yield shared
    shared.stop()


def sim_in_flight(stack: Stack) -> int:
    return int(httpx.get(f"{stack.sim_url}/_sim/stats").json()["in_flight"])


def scheduled_deliveries(stack: Stack) -> int:
    client = stack.redis_client()
    try:
        return sum(1 for member in client.zrange("tw:q:delayed", 0, -1) if member.startswith(b"h|"))
    finally:
        client.close()


def test_deliveries_waiting_to_retry_do_not_fill_the_queue(
    stack: Stack, apis: list[Api], receiver: Receiver
) -> None:
    url = receiver.answer("/down", (500, {}, 0))
    tasks = [text_task(webhookURL=url) for _ in range(MAX_DEPTH)]
    response = apis[0].post(tasks, key=KEY_B)
    assert response.status_code == 200, response.text
    wait_until(lambda: len(receiver.requests("/down")) >= MAX_DEPTH, 30, "the first attempts")
    wait_until(lambda: scheduled_deliveries(stack) == MAX_DEPTH, 30, "the retries to be due")
    # as many deliveries wait as the queue may hold: another key's work still gets in
    others = [text_task(deliveryMethod="async") for _ in range(MAX_DEPTH)]
    response = apis[1].post(others, key=KEY_C)
    assert response.status_code == 200, response.text
    assert "errors" not in response.json()
    api_c = Api(stack, key=KEY_C, url=stack.api_urls[1])
    try:
        for task in others:
            assert [item["status"] for item in api_c.wait_final(task["taskUUID"])] == ["success"]
    finally:
        api_c.close()


def test_a_keys_backlog_counts_against_its_own_quota_first(stack: Stack, apis: list[Api]) -> None:
    # the key's one running place (max_running 1) taken by a slow result...
    assert apis[0].post([text_task(SLOW_PROMPT, deliveryMethod="async")]).status_code == 200
    wait_until(lambda: sim_in_flight(stack) == 1, 30, "the first result to run")
    # ...then a flood: two wait (max_queued 2), the rest are refused, each on its own
    flood = [text_task(SLOW_PROMPT, deliveryMethod="async") for _ in range(5)]
    response = apis[0].post(flood, key=KEY_A)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["taskUUID"] for item in body["data"]] == [t["taskUUID"] for t in flood[:2]]
    assert [e["taskUUID"] for e in body["errors"]] == [t["taskUUID"] for t in flood[2:]]
    for error in body["errors"]:
        assert error["code"] == "queueLimitExceeded"
        assert "2 results waiting to run" in error["message"]
        assert "queued-results limit" in error["message"]
    assert int(response.headers["Retry-After"]) >= 1
    more = apis[1].post([text_task(SLOW_PROMPT, deliveryMethod="async")], key=KEY_A)
    assert more.status_code == 429 and int(more.headers["Retry-After"]) >= 1
    assert more.json()["errors"][0]["code"] == "queueLimitExceeded"
    # the key holds two of the queue's four places: the others are free for other keys
    others = apis[1].post([text_task(deliveryMethod="async") for _ in range(2)], key=KEY_C)
    assert others.status_code == 200, others.text
    assert "errors" not in others.json()
