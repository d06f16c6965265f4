"""A result job past its try limit gets an error result, never silence: arq's own try limit
for result jobs is only a backstop far past TASKWIRE_JOB_MAX_TRIES, so the job always runs and
records "interrupted N times" itself (arq giving up first settled the job with nothing
recorded, and the task stayed processing until its retention ended)."""

from __future__ import annotations

from core.keys import Keys, TaskRef
from service.auth import key_digest, owner_id
from tests.conftest import KEY_A, Api, StackFactory, text_task

KEYS = Keys("tw", "tw:queue")


def test_a_result_past_every_try_is_recorded_as_an_error(make_stack: StackFactory) -> None:
    stack = make_stack(workers=0, env={"TASKWIRE_JOB_MAX_TRIES": "3"})
    api = Api(stack)
    try:
        task = text_task("tried too often", deliveryMethod="async")
        assert api.post([task]).status_code == 200
        # as if workers had been stopped or lost their storage under it, many times over
        ref = TaskRef(owner_id(key_digest(KEY_A)), task["taskUUID"])
        stack.redis_client().set(KEYS.retry(KEYS.job_id(ref, 0)), 9)
        stack.start_worker()
        [item] = api.wait_final(task["taskUUID"], timeout=60)
        assert item["status"] == "error"
        assert "interrupted 3 times" in item["error"]["message"]
    finally:
        api.close()
