"""Task records, results and events in Redis.

Every multi-key change is one Lua script, so a task is never half-accepted and a result is
never half-published: the record, its arq jobs and the wake-up are written together, and a
final result, its event and its notification land together or not at all.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from core.contract import Delta, ErrorItem, Final, ResultItem, TaskEvent, decode_event, decode_item
from core.jobs import JOB_INPUT_FIELDS, JobInput, job_input_from
from core.keys import ARQ_IN_PROGRESS_PREFIX, RUN_RESULT_JOB, Keys, TaskRef
from core.limits import LIMITS_LIB, UNLIMITED, BucketDefaults, LimitHit, LimitKind
from core.scheduler import BATCH, INTERACTIVE, LUA_LIB, JobClass

__all__ = ["JOB_INPUT_FIELDS", "JobInput", "TaskStore", "job_input_from"]


@dataclass(slots=True)
class NewTask:
    ref: TaskRef
    fingerprint: str
    request: dict[str, Any]
    seeds: list[int]
    trace: str | None = None  # the API request's trace context (core/tracing.py), if on


@dataclass(slots=True)
class SubmitOutcome:
    """`created` for a new task; else `existing_fingerprint` of the task already stored."""

    created: bool
    queue_full: bool = False
    existing_fingerprint: str | None = None
    over_quota: int | None = None  # the key's queued-task quota, when the task exceeded it
    limited: LimitHit | None = None  # the per-key limit that refused the task, if one did


@dataclass(slots=True)
class TaskRecord:
    ref: TaskRef
    fingerprint: str
    request: dict[str, Any]
    seeds: list[int]
    number_results: int
    created_ms: float
    results: dict[int, ResultItem] = field(default_factory=dict)
    deliveries: dict[int, dict[str, Any]] = field(default_factory=dict)  # webhook state


TaskStatus = Literal["processing", "success", "error", "partial"]


def task_status(number_results: int, done: int, errors: int) -> TaskStatus:
    """A task as a whole: `processing` until every result is final, then `success` (no
    errors), `error` (all errors) or `partial`."""
    if done < number_results:
        return "processing"
    if errors == 0:
        return "success"
    return "error" if errors >= number_results else "partial"


@dataclass(frozen=True, slots=True)
class ListCursor:
    """Where a page of a key's task list ended: the last entry's score and taskUUID."""

    score: str
    uuid: str


@dataclass(slots=True)
class TaskPage:
    records: list[TaskRecord]
    next: ListCursor | None  # None: nothing older is left


@dataclass(frozen=True, slots=True)
class FollowUpJob:
    """A job enqueued together with a final result, and the record field it initialises."""

    job_id: str
    function: str
    args: list[Any]
    ttl_ms: int
    field: str
    value: str
    index_key: str | None = None  # an index (ZSET) the job id is added to, scored by due time


@dataclass(slots=True)
class FinishOutcome:
    written: bool
    lease_lost: bool = False  # another claim holds the job (or another run settled it)
    done: int = 0
    number_results: int = 0
    errors: int = 0
    created_ms: float = 0.0


# ARGV: queue prefix, tenant prefix, fingerprint, request, seeds, n, created ms, retention
# s, max queue depth, default max queued per key, job class, rate prefix, usage prefix,
# default rps, default burst, default tokens per minute, then n job payloads, n job ids,
# the canonical taskUUID, the head of the key's task record names ("<prefix>:task:{<owner>:")
# and the trace context to store with the task ('' for none; field `tc`, core/tracing.py),
# then the channel to publish the workers' wake-up on once the task is stored ('' for none:
# a request of several tasks publishes it once, after them).
# KEYS: the task record, the n arq job keys, then the key's task index (a ZSET: taskUUIDs
# by creation time, read by GET /v1/tasks). Returns {1} (created), {0, fp} (the
# taskUUID exists), {-1} (the queue is full), {-2, limit} (the key's own queue quota is
# full), {-3, limit, wait ms} (its tokens per minute are spent) or {-4, rps, wait ms} (its
# request-rate bucket is empty). Only a created task takes a token from the bucket.
_SUBMIT = (
    LUA_LIB
    + LIMITS_LIB
    + """
local existing = redis.call('HGET', KEYS[1], 'fp')
if existing then return {0, existing} end
local n = tonumber(ARGV[6])
local J = 16
local owner = owner_of(ARGV[J + n + 1])
local own = redis.call('HMGET', ARGV[2] .. owner, 'max_queued', 'rps', 'burst', 'tpm')
local now = redis_now_ms()
local rps = tonumber(own[2] or ARGV[14])
local rate_key = ARGV[12] .. owner
local wait = bucket(rate_key, rps, tonumber(own[3] or ARGV[15]), 1, now, false)
if wait > 0 then return {-4, tostring(rps), wait} end
local tpm = tonumber(own[4] or ARGV[16])
wait = tokens_spent(ARGV[13], owner, tpm, now)
if wait > 0 then return {-3, tpm, wait} end
local quota = tonumber(own[1] or ARGV[10])
if tonumber(redis.call('HGET', QP .. 'queued', owner) or '0') + n > quota then
  return {-2, quota}
end
local waiting = redis.call('HMGET', QP .. 'depth', 'i', 'b')
if tonumber(waiting[1] or '0') + tonumber(waiting[2] or '0') + n > tonumber(ARGV[9]) then
  return {-1}
end
bucket(rate_key, rps, tonumber(own[3] or ARGV[15]), 1, now, true)
redis.call('HSET', KEYS[1], 'fp', ARGV[3], 'req', ARGV[4], 'seeds', ARGV[5], 'n', n,
           'created', ARGV[7], 'done', 0)
local trace = ARGV[J + 2 * n + 3]
if trace and trace ~= '' then redis.call('HSET', KEYS[1], 'tc', trace) end
redis.call('EXPIRE', KEYS[1], ARGV[8])
local ttl_ms = tonumber(ARGV[8]) * 1000
local created = math.floor(tonumber(ARGV[7]))
for i = 1, n do
  redis.call('SET', KEYS[1 + i], ARGV[J + i], 'PX', ttl_ms)
  make_ready(ARGV[11], ARGV[J + n + i], created)
end
-- The key's task index: this task, and a few of its oldest entries dropped once their
-- records have expired (a record lives `retention` past its last result, so an entry older
-- than that is checked, not assumed gone). The index outlives its newest task's record.
local index = KEYS[n + 2]
redis.call('ZADD', index, ARGV[7], ARGV[J + 2 * n + 1])
local head = ARGV[J + 2 * n + 2]
local old = redis.call('ZRANGEBYSCORE', index, '-inf', created - ttl_ms, 'LIMIT', 0, 8)
for _, member in ipairs(old) do
  if redis.call('EXISTS', head .. member .. '}') == 0 then redis.call('ZREM', index, member) end
end
redis.call('PEXPIRE', index, 2 * ttl_ms)
local wake = ARGV[J + 2 * n + 4]
if wake and wake ~= '' then redis.call('PUBLISH', wake, '1') end
return {1}
"""
)

# Redis names a cached script by its SHA-1 (EVALSHA): an identifier, not a security measure.
_SUBMIT_SHA = hashlib.sha1(_SUBMIT.encode(), usedforsecurity=False).hexdigest()

# Appends one event to a task's stream and notifies live readers with "<id> <payload>".
_APPEND_EVENT = """
local function append_event(stream, payload, ttl, maxlen)
  local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'd', payload)
  redis.call('EXPIRE', stream, ttl)
  redis.call('PUBLISH', stream, id .. ' ' .. payload)
  return id
end
"""

# KEYS: the events stream, the queue's `holders` hash; ARGV: ttl, maxlen, the result's job
# id, the appending run's claim token ('' for none), then the events. A run whose claim no
# longer holds the job (its lease lapsed and another claim took it, or the job was settled)
# appends nothing and gets false: a worker cut off from Redis for longer than a lease must
# not add a stale attempt's deltas to a stream another run is writing.
_APPEND = (
    _APPEND_EVENT
    + """
if ARGV[4] ~= '' then
  local holder = redis.call('HGET', KEYS[2], ARGV[3])
  if holder ~= ARGV[4] then return false end
end
local ids = {}
for i = 5, #ARGV do
  ids[#ids + 1] = append_event(KEYS[1], ARGV[i], ARGV[1], ARGV[2])
end
return ids
"""
)

# Records a final result in a task record unless one is there, with what goes with it: the
# done/errors counts, the record's retention, a follow-up job (its webhook delivery, JSON
# from TaskStore.follow_up_json, or ''), the still-pending delta events and the final event,
# appended and published. Returns false if the slot was already final, else {done, errors}.
# Composed after LUA_LIB by the finish and cancel scripts.
RECORD_FINAL = (
    _APPEND_EVENT
    + """
local function record_final(task, events, field, item, event, ttl, maxlen, is_error, follow,
                            pending)
  if redis.call('HSETNX', task, field, item) == 0 then return false end
  local done = redis.call('HINCRBY', task, 'done', 1)
  local errors = redis.call('HINCRBY', task, 'errors', tonumber(is_error))
  redis.call('EXPIRE', task, ttl)
  if follow ~= '' then
    -- a job that follows the result (its webhook delivery), enqueued with it
    local f = cjson.decode(follow)
    redis.call('HSET', task, f.field, f.value)
    redis.call('SET', f.job_key, f.payload, 'PX', f.ttl_ms)
    enqueue('h', f.job_id, f.score, f.score)
    if f.index ~= '' then redis.call('ZADD', f.index, f.score, f.job_id) end
    redis.call('PUBLISH', f.wake, '1')
  end
  for _, p in ipairs(pending) do append_event(events, p, ttl, maxlen) end
  append_event(events, event, ttl, maxlen)
  return {done, errors}
end
"""
)

# Records a final result unless one is there, publishes it after the pending deltas, and
# settles the job (its lease and arq keys) in the same step, enqueuing a follow-up job; but
# only for the claim that may act on the job (core/scheduler.py `may_act`): a run whose
# lease lapsed and was claimed by another, or whose job was settled by another run, changes
# nothing and gets {-2} ("lease lost"). A second final result for the slot is refused by
# record_final (HSETNX) before anything is appended, published or enqueued: {0}. A recorded
# result's upstream tokens are added to its key's tokens-per-minute counter (core/limits.py)
# in the same step.
# KEYS: task, events, arq job, arq retry. ARGV: queue prefix, result field, item, final
# event, retention s, stream maxlen, 1 if an error, job id, job class, in-progress prefix,
# follow-up (JSON or ''), claim token, usage prefix, upstream tokens used (0: none), pending
# delta events...
_FINISH = (
    LUA_LIB
    + LIMITS_LIB
    + RECORD_FINAL
    + """
if not may_act(ARGV[9], ARGV[8], ARGV[12]) then return {-2} end
settle(ARGV[9], ARGV[8], ARGV[10])
unqueue(ARGV[9], ARGV[8])  -- a copy re-queued after this run's lease lapsed has no work left
redis.call('DEL', KEYS[3], KEYS[4])
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local recorded = record_final(KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
                              ARGV[7], ARGV[11], {unpack(ARGV, 15)})
if not recorded then return {0} end
local tokens = tonumber(ARGV[14])
if tokens > 0 then record_usage(ARGV[13], owner_of(ARGV[8]), tokens) end
local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
local created = redis.call('HGET', KEYS[1], 'created')
return {1, recorded[1], n, recorded[2], created}
"""
)


def job_class_of(request: dict[str, Any]) -> JobClass:
    """Somebody is waiting on sync and stream results (interactive); async ones are batch."""
    return BATCH if request.get("deliveryMethod") == "async" else INTERACTIVE


def arq_job(function: str, args: list[Any], enqueue_time_ms: int) -> str:
    """A job in arq's serialised format (JSON here, never pickle): arq workers run it."""
    return _dumps({"t": None, "f": function, "a": args, "k": {}, "et": enqueue_time_ms})


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class TaskStore:
    """Reads and writes task state. One instance per process, over a shared Redis client."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        retention_s: int,
        max_queue_depth: int = 200_000,
        max_queued_per_key: int = 50_000,
        event_maxlen: int = 10_000,
        rate: BucketDefaults = UNLIMITED,
        tokens_per_minute: int = 0,
    ):
        self.redis = redis
        self.keys = keys
        self.retention_s = retention_s
        self.max_queue_depth = max_queue_depth
        self.max_queued_per_key = max_queued_per_key
        self.event_maxlen = event_maxlen
        self.rate = rate  # new work's bucket, for keys without their own (tenant hash)
        self.tokens_per_minute = tokens_per_minute  # likewise; 0: unlimited
        self._append = redis.register_script(_APPEND)
        self._finish = redis.register_script(_FINISH)

    # --- API side

    async def submit(self, tasks: Sequence[NewTask]) -> list[SubmitOutcome]:
        """Store and enqueue new tasks in one round trip; existing taskUUIDs are left alone."""
        if not tasks:
            return []
        now = time.time()
        now_ms = int(now * 1000)
        created_ms = f"{now * 1000:.3f}"
        if len(tasks) == 1:
            # One task (every sync request): one EVALSHA, which publishes the wake-up
            # itself, without a pipeline's machinery.
            args = self._submit_args(tasks[0], now_ms, created_ms, wake=True)
            try:
                reply = await self.redis.evalsha(_SUBMIT_SHA, *args)  # type: ignore[misc]
            except NoScriptError:  # the script cache was emptied: it did not run
                await self.redis.script_load(_SUBMIT)
                reply = await self.redis.evalsha(_SUBMIT_SHA, *args)  # type: ignore[misc]
            return [_submit_outcome(reply)]
        commands = [self._submit_args(task, now_ms, created_ms, wake=False) for task in tasks]
        replies = await self._submit_many(commands)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            await self.redis.script_load(_SUBMIT)
            again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            redone = await self._submit_many([commands[i] for i in again])
            for i, reply in zip(again, redone, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [_submit_outcome(reply) for reply in replies]

    async def _submit_many(self, commands: list[list[Any]]) -> list[Any]:
        """The submit script for each of `commands` and one wake-up, in one round trip;
        a command's error is its reply (a NoScriptError did not run)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for args in commands:
                pipe.evalsha(_SUBMIT_SHA, *args)
            pipe.publish(self.keys.wake, b"1")
            replies = await pipe.execute(raise_on_error=False)
        return list(replies[:-1])

    def _submit_args(self, task: NewTask, now_ms: int, created_ms: str, *, wake: bool) -> list[Any]:
        """The submit script's key count, KEYS and ARGV for one task (EVALSHA, not EVAL:
        the script is 8 KB, sent and hashed by Redis on every EVAL)."""
        n = len(task.seeds)
        job_ids = [self.keys.job_id(task.ref, i) for i in range(n)]
        payloads = [
            arq_job(RUN_RESULT_JOB, [task.ref.owner, task.ref.uuid, i], now_ms) for i in range(n)
        ]
        keys = [
            self.keys.task(task.ref),
            *(self.keys.job(job_id) for job_id in job_ids),
            self.keys.task_index(task.ref.owner),
        ]
        return [
            len(keys),
            *keys,
            self.keys.queue_prefix,
            self.keys.tenant_prefix,
            task.fingerprint,
            _dumps(task.request),
            _dumps(task.seeds),
            str(n),
            created_ms,
            str(self.retention_s),
            str(self.max_queue_depth),
            str(self.max_queued_per_key),
            job_class_of(task.request),
            self.keys.rate_prefix,
            self.keys.usage_prefix,
            str(self.rate.rate),
            str(self.rate.burst),
            str(self.tokens_per_minute),
            *payloads,
            *job_ids,
            task.ref.uuid,
            f"{self.keys.task_head}{task.ref.owner}:",
            task.trace or "",
            self.keys.wake if wake else "",
        ]

    async def get(self, ref: TaskRef) -> TaskRecord | None:
        raw = await self.redis.hgetall(self.keys.task(ref))  # type: ignore[misc]
        if not raw or b"fp" not in raw:
            return None
        return _record_from_hash(ref, raw)

    async def get_many(self, refs: Sequence[TaskRef]) -> list[TaskRecord | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for ref in refs:
                pipe.hgetall(self.keys.task(ref))
            replies = await pipe.execute()
        return [
            _record_from_hash(ref, raw) if raw and b"fp" in raw else None
            for ref, raw in zip(refs, replies, strict=True)
        ]

    async def list_page(
        self,
        owner: str,
        *,
        limit: int,
        after: ListCursor | None = None,
        status: TaskStatus | None = None,
        scan_max: int = 1000,
    ) -> TaskPage:
        """A key's tasks, newest first, after `after`, with `status` if given: at most
        `limit` records, looking at no more than `scan_max` index entries (a filtered page
        may then hold fewer records than `limit` and still have a `next` cursor). Entries
        whose records have expired are dropped from the index on the way."""
        index = self.keys.task_index(owner)
        top = after.score if after is not None else "+inf"
        chunk = max(limit, 50)
        offset = 0
        scanned = 0
        picked: list[tuple[str, str]] = []  # (uuid, score)
        last: tuple[str, str] | None = None  # the last entry looked at
        gone: list[str] = []
        exhausted = False
        while len(picked) < limit and scanned < scan_max:
            entries = await self.redis.zrevrangebyscore(
                index, top, "-inf", start=offset, num=chunk, withscores=True, score_cast_func=_text
            )
            offset += len(entries)
            if len(entries) < chunk:
                exhausted = True
            # Entries of the cursor's own score come in descending taskUUID order: those up
            # to and including the cursor's were on earlier pages.
            fresh = [
                (_text(member), score)
                for member, score in entries
                if after is None or score != after.score or _text(member) < after.uuid
            ]
            async with self.redis.pipeline(transaction=False) as pipe:
                for uuid, _ in fresh:
                    pipe.hmget(self.keys.task(TaskRef(owner, uuid)), ["n", "done", "errors"])
                counts = await pipe.execute()
            for (uuid, score), (n, done, errors) in zip(fresh, counts, strict=True):
                if len(picked) >= limit or scanned >= scan_max:
                    break
                scanned += 1
                last = (uuid, score)
                if n is None:
                    gone.append(uuid)
                    continue
                current = task_status(int(n), int(done or 0), int(errors or 0))
                if status is None or current == status:
                    picked.append((uuid, score))
            else:
                if exhausted:
                    break
                continue
            exhausted = False  # stopped inside this chunk: more may follow
            break
        if gone:
            await self.redis.zrem(index, *gone)
        records = await self.get_many([TaskRef(owner, uuid) for uuid, _ in picked])
        found = [record for record in records if record is not None]
        more = not exhausted and last is not None
        return TaskPage(found, ListCursor(last[1], last[0]) if more and last else None)

    # --- worker side

    async def load_job_input(self, ref: TaskRef, index: int) -> JobInput | None:
        fields = await self.redis.hmget(  # type: ignore[misc]
            self.keys.task(ref), [*JOB_INPUT_FIELDS, f"r:{index}"]
        )
        return job_input_from(fields, index)

    async def trace_carrier(self, ref: TaskRef) -> bytes | None:
        """The trace context stored with a task (None: none, or the task is gone)."""
        found: bytes | None = await self.redis.hget(self.keys.task(ref), "tc")  # type: ignore[misc]
        return found

    async def read_events(
        self, ref: TaskRef, after: str = "0-0", page: int = 1000
    ) -> list[tuple[str, TaskEvent | None]]:
        """The stored events of a task after the event id `after`, in order (None for an
        event this version does not know)."""
        key = self.keys.events(ref)
        found: list[tuple[str, TaskEvent | None]] = []
        start = f"({after}" if after != "0-0" else "-"
        while True:
            entries = await self.redis.xrange(key, min=start, max="+", count=page)
            for event_id, fields in entries:
                found.append((_text(event_id), decode_event(fields[b"d"])))
            if len(entries) < page:
                return found
            start = f"({found[-1][0]}"

    async def append_events(
        self, ref: TaskRef, events: Sequence[TaskEvent], index: int = 0, token: str = ""
    ) -> list[str] | None:
        """Append events to the task's stream (one round trip) and notify live readers.
        With the claim `token` of the run of result `index`: None, and nothing appended, if
        that claim no longer holds the result's job (core/scheduler.py's claim tokens)."""
        ids = await self._append(
            keys=[self.keys.events(ref), self.keys.queue_prefix + "holders"],
            args=[
                self.retention_s,
                self.event_maxlen,
                self.keys.job_id(ref, index),
                token,
                *(event.encode() for event in events),
            ],
        )
        if ids is None:
            return None
        return [_text(event_id) for event_id in ids]

    async def finish_result(
        self,
        ref: TaskRef,
        final: Final,
        pending: Sequence[Delta] = (),
        then: FollowUpJob | None = None,
        job_class: str = INTERACTIVE,
        token: str = "",
        usage_tokens: int = 0,
    ) -> FinishOutcome:
        """Record a final result unless one is already there, publish it after the
        still-pending delta events, settle the result's job (lease, running slot and arq
        keys; `job_class` is the queue class it was claimed from), enqueue `then` (with
        the record field it sets) and, if recorded, add `usage_tokens` (the upstream tokens
        the result used) to its key's tokens-per-minute counter, all in one step. `token` is
        the claim's (core/scheduler.py): if another claim holds the job, nothing happens
        (`lease_lost`); '' holds no lease (it may act only on a job no claim holds)."""
        index = final.index
        job_id = self.keys.job_id(ref, index)
        follow = self.follow_up_json(then)
        item = final.item.encode()  # the record and the event carry the same bytes
        reply = await self._finish(
            keys=[
                self.keys.task(ref),
                self.keys.events(ref),
                self.keys.job(job_id),
                self.keys.retry(job_id),
            ],
            args=[
                self.keys.queue_prefix,
                f"r:{index}",
                item,
                final.encode(item),
                self.retention_s,
                self.event_maxlen,
                1 if isinstance(final.item, ErrorItem) else 0,
                job_id,
                job_class,
                ARQ_IN_PROGRESS_PREFIX,
                follow,
                token,
                self.keys.usage_prefix,
                max(usage_tokens, 0),
                *(delta.encode() for delta in pending),
            ],
        )
        if int(reply[0]) != 1:
            return FinishOutcome(written=False, lease_lost=int(reply[0]) == -2)
        return FinishOutcome(
            written=True,
            done=int(reply[1]),
            number_results=int(reply[2]),
            errors=int(reply[3]),
            created_ms=float(reply[4]),
        )

    def follow_up_json(self, then: FollowUpJob | None) -> str:
        """A follow-up job as RECORD_FINAL takes it ('' for none)."""
        if then is None:
            return ""
        return _dumps(
            {
                "field": then.field,
                "value": then.value,
                "job_key": self.keys.job(then.job_id),
                "job_id": then.job_id,
                "payload": arq_job(then.function, then.args, _now_ms()),
                "ttl_ms": then.ttl_ms,
                "score": _now_ms(),
                "wake": self.keys.wake,
                "index": then.index_key or "",
            }
        )


def _submit_outcome(reply: list[Any]) -> SubmitOutcome:
    status = int(reply[0])
    if status == 1:
        return SubmitOutcome(created=True)
    if status == -1:
        return SubmitOutcome(created=False, queue_full=True)
    if status == -2:
        quota = int(reply[1])
        return SubmitOutcome(
            created=False, over_quota=quota, limited=LimitHit("queued", quota, 5.0)
        )
    if status in (-3, -4):
        kind: LimitKind = "tokens" if status == -3 else "rate"
        hit = LimitHit(kind, float(reply[1]), int(reply[2]) / 1000)
        return SubmitOutcome(created=False, limited=hit)
    return SubmitOutcome(created=False, existing_fingerprint=_text(reply[1]))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record_from_hash(ref: TaskRef, raw: dict[bytes, bytes]) -> TaskRecord:
    results = {
        int(key[2:]): decode_item(value) for key, value in raw.items() if key.startswith(b"r:")
    }
    deliveries = {
        int(key[2:]): json.loads(value) for key, value in raw.items() if key.startswith(b"w:")
    }
    return TaskRecord(
        ref=ref,
        fingerprint=raw[b"fp"].decode(),
        request=json.loads(raw[b"req"]),
        seeds=json.loads(raw[b"seeds"]),
        number_results=int(raw[b"n"]),
        created_ms=float(raw[b"created"]),
        results=results,
        deliveries=deliveries,
    )
