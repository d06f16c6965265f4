"""Fair scheduling end to end: another key's interactive task overtakes a 10,000-task batch
backlog, and two flooding keys share the workers' turns."""

from __future__ import annotations

import collections
import time

from service.auth import key_digest, owner_id
from tests.conftest import KEY_A, KEY_B, Api, StackFactory, log_lines, text_task

FLOOD_ENV = {
    "TASKWIRE_KEY_MAX_QUEUED": "100000",
    "TASKWIRE_WORKER_MAX_JOBS": "20",  # a small worker, so the backlog stays queued
}


def submit_async(api: Api, key: str, count: int, prompt: str) -> set[str]:
    """Submit `count` async tasks for `key`; their taskUUIDs."""
    uuids: set[str] = set()
    for start in range(0, count, 500):
        batch = [
            text_task(f"{prompt} {i}", deliveryMethod="async")
            for i in range(start, min(count, start + 500))
        ]
        response = api.post(batch, key=key)
        assert response.status_code == 200, response.text[:300]
        uuids.update(task["taskUUID"] for task in batch)
    return uuids


def waiting(stack_redis: object, job_class: str) -> int:
    import redis

    assert isinstance(stack_redis, redis.Redis)
    return int(stack_redis.hget("tw:q:depth", job_class) or 0)


def test_an_interactive_task_overtakes_a_ten_thousand_task_backlog(
    make_stack: StackFactory,
) -> None:
    stack = make_stack(env=FLOOD_ENV)
    api = Api(stack)
    submit_async(api, KEY_A, 10_000, "[[sim:ttft=300]] backlog")
    client = stack.redis_client()
    assert waiting(client, "b") > 9_000
    started = time.monotonic()
    response = api.post([text_task("[[sim:ttft=0]] I am waiting", seed=5)], key=KEY_B)
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.json()["data"][0]["status"] == "success"
    # started ahead of the whole backlog: at most one upstream round of the running jobs
    assert elapsed < 5, elapsed
    assert waiting(client, "b") > 8_500
    client.close()
    api.close()


def test_two_flooding_keys_share_the_workers_turns(make_stack: StackFactory) -> None:
    stack = make_stack(env=FLOOD_ENV)
    api = Api(stack)
    first = submit_async(api, KEY_A, 1_500, "[[sim:ttft=50]] flood A")
    second = submit_async(api, KEY_B, 500, "[[sim:ttft=50]] flood B")
    owner_b = owner_id(key_digest(KEY_B))
    client = stack.redis_client()
    deadline = time.monotonic() + 60
    while int(client.hget("tw:q:queued", owner_b) or 0) > 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    client.close()
    # from when B's results started finishing (after the 20 of A's already running), while
    # both keys had work waiting: turns alternate although A queued three times as much
    lines = log_lines(stack.workers[0].log_path, "result.finished")
    both = first | second
    finished = [line["task_uuid"] for line in lines if line["task_uuid"] in both]
    first_b = next(i for i, uuid in enumerate(finished) if uuid in second)
    finished = finished[first_b + 20 : first_b + 320]
    counts = collections.Counter("A" if uuid in first else "B" for uuid in finished)
    assert len(finished) == 300
    assert abs(counts["A"] - counts["B"]) <= 30, counts  # within 10%
    api.close()
