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


def test_the_claim_reads_and_counts_what_arqs_run_job_transaction_does() -> None:
    # worker/queue.py's run_job skips arq's MULTI because the claim script does its work
    # (core/scheduler.py): read the job, count the try, keep the counter 88400 s
    source = inspect.getsource(Worker.run_job)
    for step in (
        "pipe.get(job_key_prefix + job_id)",
        "pipe.incr(retry_key_prefix + job_id)",
        "pipe.expire(retry_key_prefix + job_id, 88400)",
    ):
        assert step in source, f"arq's run_job no longer does {step}"
    from core.scheduler import _CLAIM

    assert "redis.call('INCR', retry_prefix .. job)" in _CLAIM
    assert "redis.call('EXPIRE', retry_prefix .. job, 88400)" in _CLAIM


def _seam_worker(functions: list[object]) -> tuple[object, list[tuple[str, bool, object]]]:
    from arq.worker import func

    from core.keys import Keys
    from core.scheduler import Fairness, Scheduler
    from worker.queue import QueueWorker, json_deserializer, json_serializer

    redis = types.SimpleNamespace(register_script=lambda script: None)
    scheduler = Scheduler(redis, Keys("tw", "tw:queue"), 10.0, Fairness())  # type: ignore[arg-type]
    worker = QueueWorker(
        scheduler=scheduler,
        worker_key="tw:workers:test",
        functions=[func(f, name=f.__name__) for f in functions],  # type: ignore[attr-defined]
        redis_pool=object(),  # type: ignore[arg-type]
        keep_result=0,
        max_tries=3,
        job_serializer=json_serializer,
        job_deserializer=json_deserializer,
    )
    ended: list[tuple[str, bool, object]] = []

    async def finish_job(job_id: str, finish: bool, *rest: object) -> None:
        ended.append((job_id, finish, rest[3]))  # incr_score

    async def finish_failed_job(job_id: str, result_data: bytes | None) -> None:
        ended.append((job_id, False, "failed"))

    worker.finish_job = finish_job  # type: ignore[method-assign]
    worker.finish_failed_job = finish_failed_job  # type: ignore[method-assign]
    return worker, ended


async def _run(worker: object, claim: object, job_id: str) -> None:
    from worker.queue import _RUN

    reset = _RUN.set(claim)  # type: ignore[arg-type]
    try:
        await worker.run_job(job_id, 0)  # type: ignore[attr-defined]
    finally:
        _RUN.reset(reset)


async def test_run_job_runs_a_claimed_job_from_what_the_claim_read() -> None:
    from worker.context import Claim
    from worker.queue import _RUN, json_serializer

    seen: list[tuple[object, ...]] = []

    async def job(ctx: dict[str, object], *args: object) -> None:
        seen.append((ctx["job_id"], ctx["job_try"], args, _RUN.get(), asyncio.current_task()))

    async def retry(ctx: dict[str, object], *args: object) -> None:
        await asyncio.sleep(0.3)  # a run that took a while before asking to retry
        raise Retry(defer=2)

    worker, ended = _seam_worker([job, retry])

    def claim(function: str, job_try: int) -> Claim:
        payload = json_serializer({"t": None, "f": function, "a": [1, "x"], "k": {}, "et": 5})
        return Claim("b", None, False, token="t.1", payload=payload, job_try=job_try)

    ran = claim("job", 2)
    await _run(worker, ran, "o:u:0")
    [(job_id, job_try, args, run_claim, task)] = seen
    assert (job_id, job_try, args, run_claim) == ("o:u:0", 2, (1, "x"), ran)
    assert task is not asyncio.current_task()  # a task of its own, in the run's context
    assert ended == [("o:u:0", True, None)]
    assert worker.jobs_complete == 1  # type: ignore[attr-defined]

    ended.clear()
    await _run(worker, claim("retry", 1), "o:u:1")
    [(job_id, finish, incr_score)] = ended
    assert job_id == "o:u:1" and not finish and isinstance(incr_score, int)
    # handed back, due again the Retry's delay from now (not also the run's 0.3 s: arq adds
    # that to move an old queue score; the hand-back measures from now)
    assert incr_score == 2000

    ended.clear()
    await _run(worker, claim("job", 4), "o:u:2")  # past max_tries: never run
    await _run(worker, Claim("b", None, False, token="t.2", payload=None, job_try=1), "o:u:3")
    assert ended == [("o:u:2", False, "failed"), ("o:u:3", False, "failed")]
    assert len(seen) == 1


async def test_a_lapsed_run_ending_after_a_newer_run_of_its_job_leaves_that_run_alone() -> None:
    # A worker stalled past its lease claims its own job again; the old run then ends
    # (lease lost) while the new one runs. The old run's cleanup must not remove the new
    # run's task entry: the new run's own cleanup then raised KeyError, which turned its
    # hand-back (a Retry here) into a failure that settled the job with no result.
    from worker.context import Claim
    from worker.queue import json_serializer

    release_old = asyncio.Event()
    new_started = asyncio.Event()
    release_new = asyncio.Event()

    async def job(ctx: dict[str, object], which: str) -> None:
        if which == "old":
            await release_old.wait()
            return
        new_started.set()
        await release_new.wait()
        raise Retry(defer=1)

    worker, ended = _seam_worker([job])

    def claim(which: str, token: str) -> Claim:
        payload = json_serializer({"t": None, "f": "job", "a": [which], "k": {}, "et": 5})
        return Claim("b", None, False, token=token, payload=payload, job_try=1)

    old = asyncio.create_task(_run(worker, claim("old", "t.1"), "o:u:0"))
    await asyncio.sleep(0.05)
    new = asyncio.create_task(_run(worker, claim("new", "t.2"), "o:u:0"))
    await new_started.wait()
    release_old.set()
    await old
    release_new.set()
    await new
    assert ended == [("o:u:0", True, None), ("o:u:0", False, 1000)]
