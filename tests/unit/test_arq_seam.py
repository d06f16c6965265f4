"""What worker/queue.py relies on inside arq. If an arq upgrade moves any of it, this fails
loudly here, naming what moved, instead of somewhere deep in a worker at run time."""

from __future__ import annotations

import asyncio
import inspect
import types

import arq
import arq.constants
import pytest
from arq.worker import Retry, Worker

from core.keys import (
    ARQ_IN_PROGRESS_PREFIX,
    ARQ_JOB_PREFIX,
    ARQ_RETRY_PREFIX,
)


def test_arq_is_a_version_the_seam_was_written_for() -> None:
    major, minor = (int(part) for part in arq.VERSION.split(".")[:2])
    assert (major, minor) >= (0, 26) and (major, minor) < (0, 29), arq.VERSION


def test_arq_key_prefixes_are_the_ones_taskwire_writes() -> None:
    assert arq.constants.job_key_prefix == ARQ_JOB_PREFIX
    assert arq.constants.in_progress_key_prefix == ARQ_IN_PROGRESS_PREFIX
    assert arq.constants.retry_key_prefix == ARQ_RETRY_PREFIX


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_worker_methods_the_seam_overrides_or_calls_keep_their_signatures() -> None:
    assert _parameters(Worker.run_job) == ["self", "job_id", "score"]
    assert _parameters(Worker.finish_job) == [
        "self",
        "job_id",
        "finish",
        "result_data",
        "result_timeout_s",
        "keep_result_forever",
        "incr_score",
        "keep_in_progress",
    ]
    assert _parameters(Worker.finish_failed_job) == ["self", "job_id", "result_data"]
    for name in ("main", "heart_beat", "close", "run"):
        assert callable(getattr(Worker, name)), name
    init = _parameters(Worker.__init__)
    for name in (
        "functions",
        "queue_name",
        "redis_pool",
        "on_startup",
        "on_shutdown",
        "max_jobs",
        "job_timeout",
        "keep_result",
        "poll_delay",
        "max_tries",
        "health_check_interval",
        "job_completion_wait",
        "job_serializer",
        "job_deserializer",
        "ctx",
    ):
        assert name in init, f"arq.Worker() no longer takes {name}"


async def test_the_worker_state_the_seam_reads_is_still_there() -> None:
    # built inside a running loop: arq takes that loop (outside one it would make its own,
    # never closed, and leak its sockets)
    async def noop(ctx: dict[str, object]) -> None:
        return None

    worker = Worker(functions=[noop], redis_pool=object(), ctx={"x": 1})  # type: ignore[arg-type]
    assert worker.loop is asyncio.get_running_loop()
    for attribute in ("tasks", "job_counter", "allow_pick_jobs", "ctx", "max_jobs", "_pool"):
        assert hasattr(worker, attribute), f"arq.Worker has no {attribute} any more"
    assert worker.ctx["x"] == 1


def test_run_job_hands_functions_the_documented_ctx_keys() -> None:
    # arq builds each job's ctx from these names (worker/queue.py's job_function reads them)
    source = inspect.getsource(Worker.run_job)
    for key in ("'job_id'", "'job_try'"):
        assert key in source, f"arq's run_job no longer sets {key} in ctx"
    assert "self.finish_job(" in source and "self.finish_failed_job(" in source


def test_run_job_runs_the_job_function_in_a_task_of_its_own_context() -> None:
    # worker/queue.py hands each run its claim (and token) in a context variable set on the
    # task that runs run_job; the job function sees it only if run_job starts it as a task
    # (which copies the current context), and the finish hooks are awaited in run_job itself
    source = inspect.getsource(Worker.run_job)
    assert "self.loop.create_task(function.coroutine(" in source, "arq runs jobs another way"
    assert "self.finish_job(" in source and "self.finish_failed_job(" in source


@pytest.mark.parametrize(("job_try", "defer_ms"), [(1, 500), (2, 1000), (9, 15000)])
async def test_a_job_failing_on_redis_is_handed_back_not_finished(
    job_try: int, defer_ms: int
) -> None:
    # Raised on, a RedisError would make arq count the job finished: settled (its lease and
    # keys gone) as soon as Redis answers again, with no result recorded. arq's Retry makes
    # run_job call finish_job(finish=False, incr_score=defer): the seam's hand-back.
    from redis.exceptions import ConnectionError as RedisConnectionError

    from worker.context import Claim
    from worker.queue import _RUN, _WORKER, job_function

    async def fails(job: object) -> None:
        raise RedisConnectionError("Redis went away")

    claim = Claim("b", None, False, token="t.1")
    worker = types.SimpleNamespace(claims={}, contexts={})
    ctx = {_WORKER: worker, "job_id": "owner:uuid:0", "job_try": job_try, "deps": None}
    reset = _RUN.set(claim)
    try:
        with pytest.raises(Retry) as raised:
            await job_function(fails)(ctx)
    finally:
        _RUN.reset(reset)
    assert raised.value.defer_score == defer_ms
    assert isinstance(raised.value.__cause__, RedisConnectionError)
    assert "finish = False" in inspect.getsource(Worker.run_job)  # what Retry means to arq
