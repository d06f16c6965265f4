"""Per-key limits end to end, over two API processes and two workers on one Redis: request
rate, read rate, results running at once, tokens per minute, and the 429 answers' shape."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.keys import Keys
from core.scheduler import outstanding
from devenv.procs import wait_until
from devenv.stack import Stack, StackConfig
from service.auth import key_digest, owner_id
from tests.conftest import KEY_A, TEST_SETTINGS, Api, text_task, write_catalog

KEY_RATE = "tw-test-key-rate-0123456789"
KEY_BATCH = "tw-test-key-batch-0123456789"
KEY_RUN = "tw-test-key-run-0123456789"
KEY_TPM = "tw-test-key-tpm-0123456789"
KEY_READ = "tw-test-key-read-0123456789"
SLOW_PROMPT = "[[sim:tokens=20,tps=10]] take your time"  # about two seconds a result


def owner(key: str) -> str:
    return owner_id(key_digest(key))


# Named by the clear key (hashed at startup) or by the owner id: both ways are tested.
LIMITS = {
    KEY_RATE: {"rps": 2, "burst": 4},
    owner(KEY_BATCH): {"rps": 0.01, "burst": 3},
    owner(KEY_RUN): {"max_running": 2},
    KEY_TPM: {"tokens_per_minute": 20},
    owner(KEY_READ): {"read_rps": 0.01, "read_burst": 3},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_binary: str) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("limits")
    shared = Stack(
        StackConfig(
            root=root,
            api_keys=[KEY_A, KEY_RATE, KEY_BATCH, KEY_RUN, KEY_TPM, KEY_READ],
            catalog_path=write_catalog(root),
            env={**TEST_SETTINGS, "TASKWIRE_KEY_LIMITS": json.dumps(LIMITS)},
        )
    ).start(workers=2)
    shared.start_api()
    yield shared
    shared.stop()


def assert_limited(response: httpx.Response, code: str, names: str) -> dict[str, Any]:
    """A 429 in the protocol's shape: every error has `code`, names the limit, and the
    response says when to retry. Returns the first error."""
    assert response.status_code == 429, response.text
    errors = response.json()["errors"]
    assert errors and all(e["code"] == code and names in e["message"] for e in errors), errors
    assert int(response.headers["Retry-After"]) >= 1
    first: dict[str, Any] = errors[0]
    return first


def test_overrides_land_in_the_tenant_hash_by_owner_id(stack: Stack) -> None:
    client = stack.redis_client()
    try:
        assert client.hgetall(f"tw:tenant:{owner(KEY_RATE)}") == {b"rps": b"2", b"burst": b"4"}
        assert client.hgetall(f"tw:tenant:{owner(KEY_RUN)}") == {b"max_r": b"2"}
        assert client.hgetall(f"tw:tenant:{owner(KEY_A)}") == {}
    finally:
        client.close()
    for api_process in stack.apis:
        assert KEY_RATE not in api_process.log_text()  # the clear key is never logged


def test_request_rate_holds_across_two_apis(apis: list[Api]) -> None:
    accepted, refused = 0, []
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < 3:
        response = apis[sent % 2].post([text_task(deliveryMethod="async")], key=KEY_RATE)
        sent += 1
        if response.status_code == 200:
            accepted += 1
        else:
            refused.append(response)
    elapsed = time.monotonic() - started
    # burst 4, then 2 a second: per-process buckets would let through about twice this
    assert 4 <= accepted <= 4 + 2 * elapsed + 1, (accepted, sent, elapsed)
    assert refused
    error = assert_limited(refused[0], "rateLimitExceeded", "request rate limit")
    assert "2 new tasks per second" in error["message"]


def test_a_batch_costs_one_token_per_task_and_errors_are_per_task(apis: list[Api]) -> None:
    tasks = [text_task(deliveryMethod="async") for _ in range(5)]
    response = apis[0].post(tasks, key=KEY_BATCH)
    assert response.status_code == 200, response.text  # some tasks succeeded
    body = response.json()
    assert [item["taskUUID"] for item in body["data"]] == [t["taskUUID"] for t in tasks[:3]]
    assert [e["taskUUID"] for e in body["errors"]] == [t["taskUUID"] for t in tasks[3:]]
    assert {e["code"] for e in body["errors"]} == {"rateLimitExceeded"}
    assert int(response.headers["Retry-After"]) >= 1
    # all refused (on the other API process): the status of the first error
    response = apis[1].post([text_task(deliveryMethod="async") for _ in range(2)], key=KEY_BATCH)
    assert_limited(response, "rateLimitExceeded", "request rate limit")
    # re-sending an accepted task is no new work: it costs nothing and is answered
    again = apis[1].post([tasks[0]], key=KEY_BATCH)
    assert again.status_code == 200 and again.json()["data"][0]["taskUUID"] == tasks[0]["taskUUID"]


def test_reads_have_a_bucket_of_their_own(apis: list[Api]) -> None:
    lookups = [{"taskType": "getResponse", "taskUUID": text_task()["taskUUID"]} for _ in range(3)]
    first = apis[0].post(lookups, key=KEY_READ)
    assert first.status_code == 404  # the bucket paid for three lookups (of unknown tasks)
    refused = apis[1].post(lookups[:1], key=KEY_READ)
    assert_limited(refused, "rateLimitExceeded", "read rate limit")
    # new work draws on the other bucket
    assert apis[1].post([text_task(deliveryMethod="async")], key=KEY_READ).status_code == 200


def test_running_limit_holds_across_two_workers(stack: Stack, apis: list[Api]) -> None:
    wait_until(lambda: queue_empty(stack), 30, "the queue to drain")
    httpx.post(f"{stack.sim_url}/_sim/stats")  # reset the peak
    tasks = [text_task(SLOW_PROMPT, deliveryMethod="async") for _ in range(6)]
    for i, task in enumerate(tasks):
        assert apis[i % 2].post([task], key=KEY_RUN).status_code == 200
    runner = Api(stack, key=KEY_RUN)
    try:
        for task in tasks:
            items = runner.wait_final(task["taskUUID"], timeout=60)
            assert [item["status"] for item in items] == ["success"]
    finally:
        runner.close()
    stats = httpx.get(f"{stack.sim_url}/_sim/stats").json()
    assert stats["peak_in_flight"] == 2, stats  # two at once, never three


def queue_empty(stack: Stack) -> bool:
    import asyncio

    from redis.asyncio import Redis

    async def count() -> int:
        client = Redis.from_url(stack.redis_url)
        try:
            return await outstanding(client, Keys("tw", "tw:queue"))
        finally:
            await client.aclose()

    return asyncio.run(count()) == 0


def test_spent_tokens_per_minute_refuse_new_work(apis: list[Api]) -> None:
    first = apis[0].post([text_task(includeUsage=True)], key=KEY_TPM)
    assert first.status_code == 200, first.text
    assert first.json()["data"][0]["usage"]["totalTokens"] >= 20  # one result spends it
    refused: list[httpx.Response] = []

    def limited() -> bool:
        # the worker counts usage just after the result is recorded; a minute may also end
        # in between (then the next results spend the new one)
        response = apis[1].post([text_task("[[sim:tokens=30]] hi")], key=KEY_TPM)
        if response.status_code == 429:
            refused.append(response)
        return bool(refused)

    wait_until(limited, 30, "the key's tokens per minute to be spent")
    error = assert_limited(refused[0], "tokenLimitExceeded", "tokens per minute")
    assert "20 upstream tokens per minute" in error["message"]
    assert 1 <= int(refused[0].headers["Retry-After"]) <= 60  # when the minute ends
    assert_limited(apis[0].post([text_task()], key=KEY_TPM), "tokenLimitExceeded", "tokens")
    assert apis[0].post([text_task()], key=KEY_A).status_code == 200  # other keys run on
