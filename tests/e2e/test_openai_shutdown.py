"""SIGTERM while a chat completion waits: the API answers it before its shutdown grace ends
with a 503 and Retry-After (the OpenAI SDK's cue to retry; with the same Idempotency-Key the
retry waits for the same task), never uvicorn's bare 500 or a misleading 504."""

from __future__ import annotations

import asyncio
import signal
import uuid

import httpx
import pytest

from tests.conftest import KEY_A, MODEL, StackFactory

pytestmark = pytest.mark.timeout(90)


async def test_a_waiting_completion_gets_503_with_retry_after_on_sigterm(
    make_stack: StackFactory,
) -> None:
    stack = make_stack(
        env={"TASKWIRE_API_SHUTDOWN_DELAY_S": "0", "TASKWIRE_API_SHUTDOWN_GRACE_S": "2"}
    )
    api = stack.api
    assert api is not None and api.popen is not None
    key = str(uuid.uuid4())
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "slow [[sim:tokens=60,tps=10]]"}],
    }
    headers = {"Authorization": f"Bearer {KEY_A}", "Idempotency-Key": key}
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as http:
        waiting = asyncio.create_task(http.post("/v1/chat/completions", json=body, headers=headers))
        await asyncio.sleep(1.0)  # submitted and waiting (the answer takes about 6 s)
        assert not waiting.done()
        api.signal(signal.SIGTERM)
        answer = await waiting
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    error = answer.json()["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
    task_uuid = answer.headers["x-taskwire-task-uuid"]
    assert task_uuid in error["message"]
    assert await asyncio.to_thread(api.popen.wait, 30) == 0
