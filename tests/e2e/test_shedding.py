"""Load shedding and worker lanes on the real stack: interactive work that cannot start in
time is refused at once (503 serverBusy, Retry-After) instead of waiting; batch work and
other keys are not refused for it; a worker takes only the classes it is configured for."""

from __future__ import annotations

from devenv.procs import wait_until
from tests.conftest import KEY_B, Api, StackFactory, text_task

SHED_ENV = {
    "TASKWIRE_SYNC_TIMEOUT_S": "0.5",
    "TASKWIRE_SHED_REFRESH_S": "0.05",
    "TASKWIRE_INTERACTIVE_WAIT_BUDGET_S": "1",
}


def test_interactive_work_that_cannot_start_is_refused_fast(make_stack: StackFactory) -> None:
    stack = make_stack(workers=0, env=SHED_ENV)
    # only a batch lane: interactive work waits, and no worker starts any of it
    stack.start_worker({"TASKWIRE_WORKER_CLASSES": "bh"})
    api = Api(stack)
    backlog = [text_task(f"waiting {i}") for i in range(12)]
    response = api.post(backlog)
    assert response.status_code == 202  # accepted, still processing when the wait ended
    refused: dict[str, object] = {}

    def busy() -> bool:
        answer = api.post([text_task("one more")])
        if answer.status_code == 503:
            refused.update(answer.json()["errors"][0], retry_after=answer.headers["retry-after"])
            return True
        return False

    wait_until(busy, 10, "the API to refuse new interactive work")
    assert refused["code"] == "serverBusy" and "async" in str(refused["message"])
    assert int(str(refused["retry_after"])) >= 1
    # batch work is meant to wait: accepted, and the batch lane runs it
    [ack] = api.post([text_task("batch", deliveryMethod="async")]).json()["data"]
    assert api.wait_final(ack["taskUUID"])[0]["status"] == "success"
    # another key's single task is not behind the first key's backlog: not refused
    other = api.post([text_task("another key")], key=KEY_B)
    assert other.status_code == 202
    # an interactive lane drains the backlog, and new interactive work is accepted again
    stack.start_worker({"TASKWIRE_WORKER_CLASSES": "i"})
    for task in backlog:
        assert api.wait_final(task["taskUUID"])[0]["status"] == "success"
    wait_until(lambda: api.post([text_task("after")]).status_code == 200, 15, "sync to be accepted")
    api.close()


async def test_a_burst_on_an_idle_stack_is_served_not_refused(make_stack: StackFactory) -> None:
    # Sixteen users start sending at once on a stack that was idle: until the shedder has
    # seen the workers busy it has no measure of their capacity, which is not overload (an
    # idle second read as a start rate of a few per second, and such bursts were refused).
    import asyncio
    import time

    import httpx

    from tests.conftest import KEY_A

    stack = make_stack(env={"TASKWIRE_SHED_REFRESH_S": "0.05"})
    await asyncio.sleep(1.5)  # idle for more than the rate's window
    headers = {"Authorization": f"Bearer {KEY_A}"}
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as http:

        async def user(n: int) -> None:
            ends = time.monotonic() + 1.0
            while time.monotonic() < ends:
                task = text_task(f"burst {n} [[sim:ttft=20]]")
                statuses.append((await http.post("/v1", json=[task], headers=headers)).status_code)

        await asyncio.gather(*(user(n) for n in range(16)))
    assert len(statuses) >= 16 and set(statuses) == {200}
