"""Stopping a task's results on request (taskCancel, DELETE) or at its deadline.

A result that has not started must never start, and its error must land exactly as a
finished result's would (counted, announced on the event stream, its webhook on its way), so
one script takes its job out of the queue and records the error in the same step, composing
the finish script's own pieces (core/store.py `RECORD_FINAL`). A result that is running is
another process's business: the script marks the task record (`cancel`, which every later
claim of its jobs prefetches) and publishes the job ids on the cancel channel; the worker
running one stops it and records the error through its normal finish path, which also
settles its lease. Results already final are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from core.contract import LUA_FINAL_EVENT, ErrorItem
from core.errors import TASK_CANCELLED, TASK_EXPIRED
from core.keys import ARQ_JOB_PREFIX, ARQ_RETRY_PREFIX, TaskRef
from core.scheduler import LUA_LIB
from core.store import RECORD_FINAL, FollowUpJob, TaskRecord, TaskStore, job_class_of

# What the script did to one result: it was final already, it is final now (it had not
# started), or it is running and its worker was told to stop it.
Fate = Literal["final", "cancelled", "running"]

# KEYS: task, events. ARGV: queue prefix, job class, retention s, stream maxlen, cancel
# channel, mark (the error code), arq job prefix, arq retry prefix, then per result: index,
# job id, error item (JSON), follow-up (JSON or ''). Returns one fate per result given
# ({} if the task is gone).
_CANCEL = (
    LUA_LIB
    + RECORD_FINAL
    + LUA_FINAL_EVENT
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local fates, running = {}, {}
for i = 9, #ARGV, 4 do
  local index, job, item = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local field = 'r:' .. index
  if redis.call('HEXISTS', KEYS[1], field) == 1 then
    fates[#fates + 1] = 'final'
  elseif unqueue(ARGV[2], job) then
    -- never ran (or ran and was handed back): its final event outranks any earlier attempt
    local attempt = tonumber(redis.call('GET', ARGV[8] .. job) or '1')
    redis.call('DEL', ARGV[7] .. job, ARGV[8] .. job)
    local event = final_event(index, math.max(attempt, 1), item)
    record_final(KEYS[1], KEYS[2], field, item, event, ARGV[3], ARGV[4], 1, ARGV[i + 3], {})
    fates[#fates + 1] = 'cancelled'
  else
    running[#running + 1] = job
    fates[#fates + 1] = 'running'
  end
end
if #running > 0 then
  redis.call('HSET', KEYS[1], 'cancel', ARGV[6])
  for _, job in ipairs(running) do redis.call('PUBLISH', ARGV[5], job) end
end
return fates
"""
)


class Canceller:
    """Runs the cancel script for a task's results. One per process, over the task store."""

    def __init__(self, store: TaskStore):
        self._store = store
        self._script = store.redis.register_script(_CANCEL)

    async def cancel(
        self,
        record: TaskRecord,
        code: str,
        message: str,
        follow_up: Callable[[TaskRef, int], FollowUpJob | None] | None = None,
        indexes: list[int] | None = None,
    ) -> dict[int, Fate]:
        """Stop the task's results (all, or `indexes`) that are not final, recording `code`
        for each; `follow_up` gives the job a recorded result enqueues (its webhook
        delivery). Returns each result's fate; an empty dict if the task is gone."""
        store, ref = self._store, record.ref
        task_uuid = str(record.request.get("taskUUID", ref.uuid))
        wanted = range(record.number_results) if indexes is None else indexes
        args: list[Any] = [
            store.keys.queue_prefix,
            job_class_of(record.request),
            store.retention_s,
            store.event_maxlen,
            store.keys.cancels,
            code,
            ARQ_JOB_PREFIX,
            ARQ_RETRY_PREFIX,
        ]
        for index in wanted:
            then = follow_up(ref, index) if follow_up is not None else None
            args += [
                index,
                store.keys.job_id(ref, index),
                ErrorItem(task_uuid, index, code, message).encode(),
                store.follow_up_json(then),
            ]
        fates = await self._script(keys=[store.keys.task(ref), store.keys.events(ref)], args=args)
        return {index: _fate(raw) for index, raw in zip(wanted, fates, strict=False)}


async def read_cancel_mark(store: TaskStore, ref: TaskRef) -> str | None:
    """The task's cancel mark (the code its running results stop with), if it has one."""
    mark = await store.redis.hget(store.keys.task(ref), "cancel")  # type: ignore[misc]
    return None if mark is None else _text(mark)


def stop_message(code: str, cancel_after_s: float | None = None) -> str:
    """The message of a result stopped with `code`."""
    if code == TASK_EXPIRED:
        after = f" ({cancel_after_s:g} s after submission)" if cancel_after_s else ""
        return f"The task's cancelAfter deadline{after} passed before this result finished."
    if code == TASK_CANCELLED:
        return "The task was cancelled before this result finished."
    return "This result was stopped before it finished."


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fate(raw: bytes | str) -> Fate:
    value = _text(raw)
    if value == "cancelled":
        return "cancelled"
    return "running" if value == "running" else "final"
