"""Webhook delivery state in Redis: one record per result, kept beside the result itself,
an index of pending deliveries through which lost delivery jobs are found again, and the
attempts in flight per receiver host (so one slow host cannot take every worker's slots:
a delivery whose host is busy goes back to the queue, uncounted, instead of waiting)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from core.keys import (
    ARQ_IN_PROGRESS_PREFIX,
    ARQ_JOB_PREFIX,
    ARQ_RETRY_PREFIX,
    DELIVER_WEBHOOK_JOB,
    Keys,
    TaskRef,
)
from core.scheduler import LUA_LIB, LeaseLost
from core.store import FollowUpJob, arq_job


@dataclass(frozen=True, slots=True)
class DeliveryState:
    state: str = "pending"  # pending | delivered | failed
    attempts: int = 0  # every attempt ever made
    cycle: int = 0  # attempts in the current schedule (a re-send starts a new one)
    last_status: int | None = None
    last_error: str | None = None
    next_at: float | None = None  # epoch seconds of the next attempt, while pending
    delivered_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeliveryState:
        return cls(**json.loads(raw))

    def public(self) -> dict[str, Any]:
        """The state as getResponse items show it."""
        shown: dict[str, Any] = {"state": self.state, "attempts": self.attempts}
        if self.last_status is not None:
            shown["lastStatus"] = self.last_status
        if self.last_error is not None:
            shown["lastError"] = self.last_error
        if self.next_at is not None and self.state == "pending":
            shown["nextAttemptAt"] = _iso(self.next_at)
        if self.delivered_at is not None:
            shown["deliveredAt"] = _iso(self.delivered_at)
        return shown

    def resent(self, now: float) -> DeliveryState:
        return replace(self, state="pending", cycle=0, next_at=now)


def _iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def delivery_field(index: int) -> str:
    return f"w:{index}"


# Every pending delivery a worker has seen is in an index (a ZSET of job ids, scored by when
# the delivery is due), kept by the scripts below: the sweep reads it to find deliveries
# whose job was lost. (A delivery is indexed when its job first loads it; until then its
# job is freshly enqueued, beside the result, by the result's own script.)

# KEYS: task, pending index. ARGV: result field, delivery field, job id, now ms.
# The delivery job's view of its task (request, result item, delivery state).
_LOAD = """
local got = redis.call('HMGET', KEYS[1], 'req', ARGV[1], ARGV[2])
if got[3] and cjson.decode(got[3]).state == 'pending' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
end
return got
"""

# KEYS: task, job, retry, pending index, host holds, failing hosts, the host's failing
# deliveries. ARGV: queue prefix, field, state, task ttl s, next score ms (or ''), job id,
# job ttl ms, wake channel, now ms, in-progress prefix, '1' if the attempt failed ('0' if
# delivered, '' without a host), host, claim token. Records an attempt and gives its host
# slot back; then either puts the job back in the queue for its next attempt (waking
# workers, so they know when it falls due), or settles it. A failed attempt puts the
# delivery in its host's failing index (capped, newest kept; read by the operator console),
# a delivery takes it out. Returns 1, or -1 with nothing changed if the token's lease was
# lost (another claim holds the job: its own attempt will be recorded).
_RECORD = (
    LUA_LIB
    + """
if not may_act('h', ARGV[6], ARGV[13]) then return -1 end
redis.call('ZREM', KEYS[5], ARGV[6])
if ARGV[11] == '1' then
  redis.call('ZADD', KEYS[7], ARGV[9], ARGV[6])
  redis.call('PEXPIRE', KEYS[7], ARGV[7])
  if redis.call('ZCARD', KEYS[7]) > 1000 then redis.call('ZREMRANGEBYRANK', KEYS[7], 0, -1001) end
  redis.call('ZADD', KEYS[6], ARGV[9], ARGV[12])
  redis.call('PEXPIRE', KEYS[6], ARGV[7])
  if redis.call('ZCARD', KEYS[6]) > 500 then redis.call('ZREMRANGEBYRANK', KEYS[6], 0, -501) end
elseif ARGV[11] == '0' then
  if redis.call('ZREM', KEYS[7], ARGV[6]) == 1 and redis.call('EXISTS', KEYS[7]) == 0 then
    redis.call('ZREM', KEYS[6], ARGV[12])
  end
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[5] ~= '' then
  reschedule('h', ARGV[6], ARGV[5], ARGV[9], ARGV[10])
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[6])
  redis.call('PUBLISH', ARGV[8], '1')
else
  redis.call('DEL', KEYS[2], KEYS[3])
  settle('h', ARGV[6], ARGV[10])
  redis.call('ZREM', KEYS[4], ARGV[6])
end
return 1
"""
)

# KEYS: host holds, job, retry, pending index. ARGV: queue prefix, job id, now ms, hold ms,
# limit, due ms if busy, in-progress prefix, wake channel, job ttl ms, claim token. Takes one
# of the host's slots for this job's attempt (holds lapse, so a crashed worker's come back)
# and returns 1; or, with the host at its limit, puts the job back in the queue until `due`
# without counting the run as one of arq's tries, and returns 0; or returns -1, changing
# nothing, if the token's lease was lost (another claim holds the job: no attempt here).
_HOLD_HOST = (
    LUA_LIB
    + """
if not may_act('h', ARGV[2], ARGV[10]) then return -1 end
local job, now, hold = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], job) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('ZADD', KEYS[1], now + hold, job)
  redis.call('PEXPIRE', KEYS[1], hold)
  return 1
end
reschedule('h', job, ARGV[6], ARGV[3], ARGV[7])
if redis.call('DECR', KEYS[3]) <= 0 then redis.call('DEL', KEYS[3]) end
redis.call('PEXPIRE', KEYS[2], ARGV[9])
redis.call('ZADD', KEYS[4], ARGV[6], job)
redis.call('PUBLISH', ARGV[8], '1')
return 0
"""
)

# KEYS: task, pending index. ARGV: queue prefix, wake channel, now ms, task ttl s,
# in-progress prefix, retry prefix, then per result: field, state, job id, job key, job
# payload, job ttl ms. Re-sends deliveries that are not on their way: delivered, failed, or
# pending with a job that is neither queued nor leased (lost).
_RESEND = (
    LUA_LIB
    + """
local resent = {}
for i = 7, #ARGV, 6 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local id = ARGV[i + 2]
  if current and (cjson.decode(current).state ~= 'pending'
      or not queued_or_leased('h', id, ARGV[5])) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('SET', ARGV[i + 3], ARGV[i + 4], 'PX', ARGV[i + 5])
    redis.call('DEL', ARGV[6] .. id)
    enqueue('h', id, ARGV[3], ARGV[3])
    redis.call('ZADD', KEYS[2], ARGV[3], id)
    resent[#resent + 1] = ARGV[i]
  end
end
if #resent > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('PUBLISH', ARGV[2], '1')
end
return resent
"""
)

# KEYS: pending index. ARGV: queue prefix, now ms, in-progress prefix, retry prefix, job
# prefix, task-key head, wake channel, job ttl ms, then per overdue entry: job id, job
# payload. Drops index entries no longer pending (or whose task is gone), looks again later
# at those on their way, and enqueues again those whose job was lost. Returns those ids.
_REVIVE = (
    LUA_LIB
    + """
local revived = {}
for i = 9, #ARGV, 2 do
  local id = ARGV[i]
  local head, index = string.match(id, '^(.*):(%d+):webhook$')
  local current = head and redis.call('HGET', ARGV[6] .. head .. '}', 'w:' .. index)
  if not current or cjson.decode(current).state ~= 'pending' then
    redis.call('ZREM', KEYS[1], id)
  elseif queued_or_leased('h', id, ARGV[3]) then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
  else
    redis.call('SET', ARGV[5] .. id, ARGV[i + 1], 'PX', ARGV[8])
    redis.call('DEL', ARGV[4] .. id)
    enqueue('h', id, ARGV[2], ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    revived[#revived + 1] = id
  end
end
if #revived > 0 then redis.call('PUBLISH', ARGV[7], '1') end
return revived
"""
)


# KEYS: pending index. ARGV: queue prefix, now ms, in-progress prefix, retry prefix, job
# prefix, task-key head, wake channel, job ttl ms, task ttl s, then per delivery: job id,
# job payload. An operator's re-send (the console): each delivery is attempted again now,
# unless it is on its way already. Per delivery, in order: 'running' (an attempt is in
# flight: left alone, never doubled), 'due' (waiting for a worker already: left alone),
# 'now' (pending, its next attempt scheduled later: moved to now, its schedule kept),
# 'resent' (failed or delivered, or pending with its job lost: a new schedule starting now,
# as POST .../webhooks/redeliver does), or 'gone' (no such delivery: the task expired).
_RESEND_NOW = (
    LUA_LIB
    + """
local now = tonumber(ARGV[2])
local outcomes = {}
local woke = false
for i = 10, #ARGV, 2 do
  local id = ARGV[i]
  local head, index = string.match(id, '^(.*):(%d+):webhook$')
  local task = head and (ARGV[6] .. head .. '}')
  local field = index and ('w:' .. index)
  local current = task and redis.call('HGET', task, field)
  local outcome = 'gone'
  if current then
    local s = cjson.decode(current)
    local m = 'h|' .. id
    local pending = s.state == 'pending'
    if pending and (redis.call('ZSCORE', QP .. 'leases', m)
        or redis.call('EXISTS', ARGV[3] .. id) == 1) then
      outcome = 'running'
    elseif pending and redis.call('ZSCORE', QP .. 'ready:h:' .. owner_of(id), id) then
      outcome = 'due'
    else
      if pending and redis.call('ZREM', QP .. 'delayed', m) == 1 then
        make_ready('h', id, now)
        outcome = 'now'
      else
        s.state = 'pending'
        s.cycle = 0
        redis.call('SET', ARGV[5] .. id, ARGV[i + 1], 'PX', ARGV[8])
        redis.call('DEL', ARGV[4] .. id)
        enqueue('h', id, now, now)
        redis.call('EXPIRE', task, ARGV[9])
        outcome = 'resent'
      end
      s.next_at = now / 1000
      redis.call('HSET', task, field, cjson.encode(s))
      redis.call('ZADD', KEYS[1], now, id)
      woke = true
    end
  end
  outcomes[#outcomes + 1] = outcome
end
if woke then redis.call('PUBLISH', ARGV[7], '1') end
return outcomes
"""
)


@dataclass(slots=True)
class PendingDelivery:
    url: str
    item: dict[str, Any]
    state: DeliveryState


class DeliveryStore:
    def __init__(self, redis: Redis, keys: Keys, *, retention_s: int, schedule_s: float):
        self._redis = redis
        self.keys = keys
        self.retention_s = retention_s
        # A delivery job must outlive its whole schedule, then the retention period.
        self.job_ttl_ms = int((schedule_s + retention_s) * 1000)
        self._load = redis.register_script(_LOAD)
        self._record = redis.register_script(_RECORD)
        self._hold_host = redis.register_script(_HOLD_HOST)
        self._resend = redis.register_script(_RESEND)
        self._revive = redis.register_script(_REVIVE)
        self._resend_now = redis.register_script(_RESEND_NOW)

    def first_job(self, ref: TaskRef, index: int) -> FollowUpJob:
        """The delivery job a final result enqueues (core.store.TaskStore.finish_result)."""
        return FollowUpJob(
            job_id=self.keys.delivery_job_id(ref, index),
            function=DELIVER_WEBHOOK_JOB,
            args=[ref.owner, ref.uuid, index],
            ttl_ms=self.job_ttl_ms,
            field=delivery_field(index),
            value=DeliveryState(next_at=time.time()).to_json(),
            index_key=self.keys.pending_deliveries,
        )

    async def load(self, ref: TaskRef, index: int) -> PendingDelivery | None:
        """The URL, the result item and the delivery state, or None if any is gone."""
        req, item, state = await self._load(
            keys=[self.keys.task(ref), self.keys.pending_deliveries],
            args=[
                f"r:{index}",
                delivery_field(index),
                self.keys.delivery_job_id(ref, index),
                _now_ms(),
            ],
        )
        if req is None or item is None or state is None:
            return None
        url = json.loads(req).get("webhookURL")
        if not url:
            return None
        return PendingDelivery(url, json.loads(item), DeliveryState.from_json(state))

    async def hold_host(
        self,
        ref: TaskRef,
        index: int,
        host: str,
        limit: int,
        hold_s: float,
        busy_s: float,
        token: str = "",
    ) -> bool:
        """Take one of `host`'s `limit` slots for this delivery's attempt, held at most
        `hold_s` (True); or, if the host is at its limit, put the delivery back in the queue
        to try again in `busy_s`, its attempts and arq's tries uncounted (False). `token` is
        the claim's; LeaseLost if another claim holds the job (nothing changed)."""
        job_id = self.keys.delivery_job_id(ref, index)
        now = _now_ms()
        due = now + int(busy_s * 1000)
        held = await self._hold_host(
            keys=[
                self.keys.webhook_host(host),
                self.keys.job(job_id),
                self.keys.retry(job_id),
                self.keys.pending_deliveries,
            ],
            args=[
                self.keys.queue_prefix,
                job_id,
                now,
                int(hold_s * 1000),
                limit,
                due,
                ARQ_IN_PROGRESS_PREFIX,
                self.keys.wake,
                self.job_ttl_ms,
                token,
            ],
        )
        if int(held) < 0:
            raise LeaseLost(job_id)
        return bool(held)

    async def release_host(self, ref: TaskRef, index: int, host: str) -> None:
        """Give the host slot back without recording (an attempt that ended abnormally)."""
        await self._redis.zrem(self.keys.webhook_host(host), self.keys.delivery_job_id(ref, index))

    async def record(
        self,
        ref: TaskRef,
        index: int,
        state: DeliveryState,
        retry_in_s: float | None,
        host: str = "",
        token: str = "",
    ) -> None:
        """Store an attempt's outcome and give its `host` slot back; reschedule the job
        (`retry_in_s`) or settle it. `token` is the claim's; LeaseLost if another claim
        holds the job (nothing recorded, rescheduled or enqueued)."""
        job_id = self.keys.delivery_job_id(ref, index)
        next_score = "" if retry_in_s is None else str(int((time.time() + retry_in_s) * 1000))
        task_ttl = self.retention_s + int(retry_in_s or 0)
        recorded = await self._record(
            keys=[
                self.keys.task(ref),
                self.keys.job(job_id),
                self.keys.retry(job_id),
                self.keys.pending_deliveries,
                self.keys.webhook_host(host),
                self.keys.failing_hosts,
                self.keys.failing_deliveries(host),
            ],
            args=[
                self.keys.queue_prefix,
                delivery_field(index),
                state.to_json(),
                task_ttl,
                next_score,
                job_id,
                self.job_ttl_ms,
                self.keys.wake,
                _now_ms(),
                ARQ_IN_PROGRESS_PREFIX,
                "" if not host else ("0" if state.state == "delivered" else "1"),
                host,
                token,
            ],
        )
        if int(recorded) < 0:
            raise LeaseLost(job_id)

    async def resend(self, ref: TaskRef, states: dict[int, DeliveryState]) -> list[int]:
        """Start a new schedule for the given results' deliveries: those delivered or failed,
        and those pending whose job was lost (one on its way is left alone)."""
        now = time.time()
        args: list[Any] = [
            self.keys.queue_prefix,
            self.keys.wake,
            int(now * 1000),
            self.retention_s,
            ARQ_IN_PROGRESS_PREFIX,
            ARQ_RETRY_PREFIX,
        ]
        for index, state in states.items():
            job = self.first_job(ref, index)
            args += [
                delivery_field(index),
                state.resent(now).to_json(),
                job.job_id,
                self.keys.job(job.job_id),
                arq_job(job.function, job.args, int(now * 1000)),
                self.job_ttl_ms,
            ]
        resent = await self._resend(
            keys=[self.keys.task(ref), self.keys.pending_deliveries], args=args
        )
        return [int(field.decode().removeprefix("w:")) for field in resent]

    async def resend_now(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Attempt these deliveries (job ids, "<owner>:<uuid>:<i>:webhook") again now, but
        never one already on its way; each id's outcome (see _RESEND_NOW)."""
        if not job_ids:
            return {}
        now = _now_ms()
        args: list[Any] = [
            self.keys.queue_prefix,
            now,
            ARQ_IN_PROGRESS_PREFIX,
            ARQ_RETRY_PREFIX,
            ARQ_JOB_PREFIX,
            self.keys.task_head,
            self.keys.wake,
            self.job_ttl_ms,
            self.retention_s,
        ]
        for job_id in job_ids:
            args += [job_id, _revived_job(job_id, now)]
        outcomes = await self._resend_now(keys=[self.keys.pending_deliveries], args=args)
        return {job_id: o.decode() for job_id, o in zip(job_ids, outcomes, strict=True)}

    async def claim_sweep(self, hold_s: float) -> bool:
        """Whether this process sweeps now: one sweeper per `hold_s` across all workers."""
        taken = await self._redis.set(
            self.keys.delivery_sweep_lock, "1", nx=True, px=max(int(hold_s * 1000), 1)
        )
        return bool(taken)

    async def revive_overdue(self, overdue_s: float, limit: int = 200) -> list[str]:
        """Enqueue again pending deliveries due more than `overdue_s` ago whose job is
        neither queued nor leased (it was lost); the job ids enqueued."""
        now = _now_ms()
        overdue: list[bytes] = await self._redis.zrangebyscore(
            self.keys.pending_deliveries, "-inf", now - int(overdue_s * 1000), start=0, num=limit
        )
        if not overdue:
            return []
        args: list[Any] = [
            self.keys.queue_prefix,
            now,
            ARQ_IN_PROGRESS_PREFIX,
            ARQ_RETRY_PREFIX,
            ARQ_JOB_PREFIX,
            self.keys.task_head,
            self.keys.wake,
            self.job_ttl_ms,
        ]
        for raw in overdue:
            job_id = raw.decode()
            args += [job_id, _revived_job(job_id, now)]
        revived = await self._revive(keys=[self.keys.pending_deliveries], args=args)
        return [job_id.decode() for job_id in revived]


def _revived_job(job_id: str, now_ms: int) -> str:
    """The arq payload of a delivery job, rebuilt from its id ("<owner>:<uuid>:<i>:webhook")."""
    owner, uuid, index, _ = job_id.rsplit(":", 3)
    return arq_job(DELIVER_WEBHOOK_JOB, [owner, uuid, int(index) if index.isdigit() else 0], now_ms)


def _now_ms() -> int:
    return int(time.time() * 1000)
