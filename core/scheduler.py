"""The queue as every worker shares it: job classes, fair turns between API keys, leases.

One FIFO line for everybody let one key's flood put every other key's work behind it. Here
the queue knows about tenants (API key owners) and classes, all in Redis and driven by Lua,
so every worker and API process sees the same shares and limits:

* **Classes.** `i` interactive results (sync, stream: somebody is waiting), `b` batch results
  (async) and `h` webhook deliveries. A claim takes due interactive work first, but the batch
  side (`b` and `h`, alternating) is owed `batch_share` of a turn for every interactive turn,
  so neither side starves the other.
* **Fair turns within a class.** Each (class, tenant) has its own ready line; an index per
  class lists only tenants *with ready work* (idle tenants cost nothing), scored by a virtual
  time: a claim serves the tenant with the lowest, then moves it on by 1/weight. A tenant
  that arrives (or comes back) joins at the class's current virtual time, so a key with one
  task and a key with 100,000 are served alternately, not in arrival order.
* **Running limits.** A tenant at its limit of running results (or deliveries) leaves the
  index and is parked in `blocked:<kind>`; the script that settles one of its jobs brings it
  back. A lapsed lease gives its slot back too, so a crashed worker never throttles a key.
* **Delayed work** (webhook back-off, hand-backs scheduled later) waits in one `delayed` set
  and is moved to its line only when due: it is never counted as backlog.
* **Leases.** A claimed job holds arq's in-progress key as a lease (renewed while it runs)
  and sits in `leases`, scored by the lease's end; a lease that lapses puts the job back at
  the front of its tenant's line.
* **Claim tokens.** Each claim of a job gets a token (unique per claim, made by the claiming
  process), returned with it and kept in `holders` (job id → token; also the in-progress
  key's value) until the job settles. Every script that acts on a leased job (finish,
  settle, renew, hand back, a delivery's record and reschedule) takes the caller's token and
  acts only if it is the job's holder (`may_act`). A lapsed lease swept back into the line
  keeps its holder until another claim takes the copy, so a run that was only slow can
  still record its result (which unqueues the copy) or take its lease back by renewing; a
  run whose job another claim took, or another run settled, is told "lease lost" and
  changes nothing.

Members of `delayed` and `leases` are "<class>|<job id>"; a job id starts with its owner.
Scripts elsewhere (submit, finish, delivery records, cancel) compose `LUA_LIB` and pass the
queue prefix as ARGV[1].
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

from core.jobs import JOB_INPUT_FIELDS, JobInput, job_input_from
from core.keys import ARQ_IN_PROGRESS_PREFIX, ARQ_JOB_PREFIX, ARQ_RETRY_PREFIX, Keys

JobClass = Literal["i", "b", "h"]
INTERACTIVE: JobClass = "i"
BATCH: JobClass = "b"
HOOK: JobClass = "h"

# Functions every queue-touching script shares. ARGV[1] is the queue prefix.
LUA_LIB = """
local QP = ARGV[1]
local function owner_of(job) return string.match(job, '^([^:]+):') end
local function kind_of(c) if c == 'h' then return 'h' end return 'r' end
local function split_member(m) return string.match(m, '^(%a)|(.*)$') end
local function vt_of(c) return redis.call('HGET', QP .. 'vt', c) or '0' end

-- a tenant with ready work in class c joins the class's index (unless it is at its limit)
local function activate(c, o)
  if redis.call('SISMEMBER', QP .. 'blocked:' .. kind_of(c), o) == 0 then
    -- a tenant joins at the class's virtual time, or later if it was served recently: its
    -- finish tag (pass + 1/weight when last served) is remembered even when its line
    -- emptied, so draining and refilling a line never earns an earlier turn
    local vt = tonumber(vt_of(c))
    local tag = tonumber(redis.call('HGET', QP .. 'tag:' .. c, o) or '0')
    local start = vt
    if tag > vt then
      start = tag
    elseif tag > 0 then
      redis.call('HDEL', QP .. 'tag:' .. c, o)
    end
    redis.call('ZADD', QP .. 'tenants:' .. c, 'NX', start, o)
  end
end

-- put a job on its tenant's ready line (score orders the line)
local function make_ready(c, job, score)
  local o = owner_of(job)
  if redis.call('ZADD', QP .. 'ready:' .. c .. ':' .. o, score, job) == 1 then
    redis.call('HINCRBY', QP .. 'depth', c, 1)
    if c ~= 'h' then redis.call('HINCRBY', QP .. 'queued', o, 1) end
  end
  activate(c, o)
end

-- enqueue a job due at `due` (ms): ready now, or delayed until then
local function enqueue(c, job, due, now)
  if tonumber(due) <= tonumber(now) then
    make_ready(c, job, due)
  else
    redis.call('ZADD', QP .. 'delayed', due, c .. '|' .. job)
  end
end

-- a running job's slot is free again; a tenant parked at its limit comes back
local function release(c, job)
  local o = owner_of(job)
  local kind = kind_of(c)
  local field = kind .. ':' .. o
  if redis.call('HINCRBY', QP .. 'running', field, -1) <= 0 then
    redis.call('HDEL', QP .. 'running', field)
  end
  if redis.call('SREM', QP .. 'blocked:' .. kind, o) == 1 then
    local classes = {'h'}
    if kind == 'r' then classes = {'i', 'b'} end
    for _, k in ipairs(classes) do
      if redis.call('EXISTS', QP .. 'ready:' .. k .. ':' .. o) == 1 then activate(k, o) end
    end
  end
end

-- Whether the caller with `token` may act on a job: its claim is the job's latest (the
-- `holders` hash maps a claimed job to its claim's token until the job is settled or its
-- copy taken out of the queue; a lapsed lease swept back into the line keeps its holder
-- until another claim takes the copy). A job no claim holds (never claimed, or settled) is
-- open only to callers without a token ('': tools, tests). Otherwise: "lease lost".
local function may_act(c, job, token)
  local holder = redis.call('HGET', QP .. 'holders', job)
  if holder then return holder == token end
  return token == ''
end

-- the job's lease ends: out of `leases`, its slot given back, its in-progress key gone
local function drop_lease(c, job, inprog)
  if redis.call('ZREM', QP .. 'leases', c .. '|' .. job) == 1 then release(c, job) end
  redis.call('DEL', inprog .. job)
end

-- the job's run is over (done, or gone): drop its lease and its holder
local function settle(c, job, inprog)
  drop_lease(c, job, inprog)
  redis.call('HDEL', QP .. 'holders', job)
end

-- take a job out of the queue before it ran; true if it was waiting there (a copy
-- re-queued after a lapsed lease: its holder goes with it)
local function unqueue(c, job)
  local o = owner_of(job)
  local removed = redis.call('ZREM', QP .. 'ready:' .. c .. ':' .. o, job)
  if removed == 1 then
    redis.call('HINCRBY', QP .. 'depth', c, -1)
    if c ~= 'h' then redis.call('HINCRBY', QP .. 'queued', o, -1) end
  end
  removed = removed + redis.call('ZREM', QP .. 'delayed', c .. '|' .. job)
  if removed > 0 then redis.call('HDEL', QP .. 'holders', job) end
  return removed > 0
end

-- the job runs again at `due` (a later attempt): out of the leases, back in the queue (a
-- copy re-queued after its lease lapsed is replaced, never doubled)
local function reschedule(c, job, due, now, inprog)
  settle(c, job, inprog)
  unqueue(c, job)
  enqueue(c, job, due, now)
end

-- whether a job is waiting, scheduled or running (its lease, or its in-progress key)
local function queued_or_leased(c, job, inprog)
  local m = c .. '|' .. job
  return redis.call('ZSCORE', QP .. 'ready:' .. c .. ':' .. owner_of(job), job) ~= false
    or redis.call('ZSCORE', QP .. 'delayed', m) ~= false
    or redis.call('ZSCORE', QP .. 'leases', m) ~= false
    or redis.call('EXISTS', inprog .. job) == 1
end

"""

# ARGV: queue prefix, tenant prefix, now ms, lease ms, limit, batch share, default weight,
# default running results, default running deliveries, in-progress prefix, task-key head,
# the classes this claim may take (e.g. "ibh", or "i" when the worker is busy), the claim's
# token prefix (unique per claim call: "<holder>:<sequence>"), arq's job and retry key
# prefixes, then the task-record fields to prefetch. Returns the next due time (ms, or -1)
# and 1 if a tenant is parked at its running limit (else 0), then per claimed job: its
# member ("<class>|<id>"), its claim token ("<prefix>.<n>", kept in `holders` and as the
# in-progress key's value), the HMGET of its task record (results only), and what arq's
# run_job would read and count in a transaction of its own: the arq job payload (false if
# it is gone) and the run's try number (arq's retry counter, incremented here).
_CLAIM = (
    LUA_LIB
    + """
local TP = ARGV[2]
local now = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local share = tonumber(ARGV[6])
local defaults = {weight = tonumber(ARGV[7]), r = tonumber(ARGV[8]), h = tonumber(ARGV[9])}
local inprog = ARGV[10]
local task_head = ARGV[11]
local allowed = ARGV[12]
local token_prefix = ARGV[13]
local job_prefix = ARGV[14]
local retry_prefix = ARGV[15]
local fields = {}
for i = 16, #ARGV do fields[#fields + 1] = ARGV[i] end

-- delayed work that fell due joins its line
local due = redis.call('ZRANGEBYSCORE', QP .. 'delayed', '-inf', now,
                      'WITHSCORES', 'LIMIT', 0, 1000)
for i = 1, #due, 2 do
  redis.call('ZREM', QP .. 'delayed', due[i])
  local c, job = split_member(due[i])
  make_ready(c, job, due[i + 1])
end

-- lapsed leases (a worker died): the job goes back to the front of its line
local lapsed = redis.call('ZRANGEBYSCORE', QP .. 'leases', '-inf', now, 'LIMIT', 0, 1000)
for _, m in ipairs(lapsed) do
  local c, job = split_member(m)
  local ttl = redis.call('PTTL', inprog .. job)
  if ttl > 0 then
    redis.call('ZADD', QP .. 'leases', now + ttl, m)
  else
    -- its holder is kept: a run that was only slow may still record (and unqueue the copy)
    drop_lease(c, job, inprog)
    make_ready(c, job, 0)
  end
end

local function tenant_value(o, field, default)
  local value = redis.call('HGET', TP .. o, field)
  if value then return tonumber(value) end
  return default
end

local sched = redis.call('HMGET', QP .. 'sched', 'credit', 'side')
local credit = tonumber(sched[1] or '0')
local side = sched[2] or 'h'

local function has(c)
  return string.find(allowed, c, 1, true) ~= nil
    and redis.call('EXISTS', QP .. 'tenants:' .. c) == 1
end

local function choose_class()
  local has_i, has_b, has_h = has('i'), has('b'), has('h')
  local batch = has_b or has_h
  if has_i and (not batch or credit < 1) then
    if batch then credit = math.min(credit + share, 1 + share) end
    return 'i'
  end
  if not batch then return nil end
  credit = math.max(credit - 1, 0)
  if has_b and has_h then
    if side == 'b' then side = 'h' else side = 'b' end
    return side
  end
  if has_b then return 'b' end
  return 'h'
end

local claimed = {-1, 0}
local started = {}
local taken = 0
local tries = 0
while taken < limit and tries < limit * 4 + 64 do
  tries = tries + 1
  -- a turn that takes no job (a stale or parked tenant) does not count against the shares
  local credit_before, side_before = credit, side
  local took = false
  local c = choose_class()
  if not c then break end
  local index = QP .. 'tenants:' .. c
  local top = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
  local o, pass = top[1], tonumber(top[2])
  local line = QP .. 'ready:' .. c .. ':' .. o
  local head = redis.call('ZRANGE', line, 0, 0)
  local kind = kind_of(c)
  local running = tonumber(redis.call('HGET', QP .. 'running', kind .. ':' .. o) or '0')
  if #head == 0 then
    redis.call('ZREM', index, o)
  elseif running >= tenant_value(o, 'max_' .. kind, defaults[kind]) then
    -- at its limit: parked until one of its jobs settles
    redis.call('ZREM', index, o)
    redis.call('SADD', QP .. 'blocked:' .. kind, o)
  else
    local job = head[1]
    redis.call('ZREM', line, job)
    redis.call('HINCRBY', QP .. 'depth', c, -1)
    if c ~= 'h' then redis.call('HINCRBY', QP .. 'queued', o, -1) end
    redis.call('HSET', QP .. 'vt', c, pass)
    local tag = pass + 1 / tenant_value(o, 'weight', defaults.weight)
    redis.call('HSET', QP .. 'tag:' .. c, o, tag)
    if redis.call('EXISTS', line) == 1 then
      redis.call('ZADD', index, tag, o)
    else
      redis.call('ZREM', index, o)
    end
    local token = token_prefix .. '.' .. (taken + 1)
    if redis.call('SET', inprog .. job, token, 'NX', 'PX', lease) == false then
      -- an earlier run of this job id still holds it: look again when that lease ends
      redis.call('ZADD', QP .. 'delayed', now + lease, c .. '|' .. job)
    else
      took = true
      local member = c .. '|' .. job
      redis.call('ZADD', QP .. 'leases', now + lease, member)
      redis.call('HINCRBY', QP .. 'running', kind .. ':' .. o, 1)
      taken = taken + 1
      started[c] = (started[c] or 0) + 1
      claimed[#claimed + 1] = member
      claimed[#claimed + 1] = token
      redis.call('HSET', QP .. 'holders', job, token)
      local head_id, result_index = string.match(job, '^(.*):(%d+)$')
      if head_id then
        local wanted = {unpack(fields)}
        wanted[#wanted + 1] = 'r:' .. result_index
        claimed[#claimed + 1] = redis.call('HMGET', task_head .. head_id .. '}', unpack(wanted))
      else
        claimed[#claimed + 1] = {}
      end
      -- arq's job read and try count (its run_job's MULTI), done here: one round trip less
      claimed[#claimed + 1] = redis.call('GET', job_prefix .. job)
      claimed[#claimed + 1] = redis.call('INCR', retry_prefix .. job)
      redis.call('EXPIRE', retry_prefix .. job, 88400)
    end
  end
  if not took then credit, side = credit_before, side_before end
end
redis.call('HSET', QP .. 'sched', 'credit', tostring(credit), 'side', side)
-- jobs started, by class, ever: the API reads the rate at which interactive work starts
for c, count in pairs(started) do redis.call('HINCRBY', QP .. 'started', c, count) end

local next_due = -1
for _, key in ipairs({'delayed', 'leases'}) do
  local first = redis.call('ZRANGE', QP .. key, 0, 0, 'WITHSCORES')
  if #first > 0 and (next_due < 0 or tonumber(first[2]) < next_due) then
    next_due = tonumber(first[2])
  end
end
claimed[1] = next_due
-- a parked tenant comes back when one of its jobs settles: the worker settling it looks again
if redis.call('EXISTS', QP .. 'blocked:r', QP .. 'blocked:h') > 0 then claimed[2] = 1 end
return claimed
"""
)

# ARGV: queue prefix, now ms, lease ms, in-progress prefix, then (member, token) pairs.
# Extends the leases the tokens hold. A run whose lease lapsed while nobody claimed its job
# (a stalled loop) takes it back: its lapsed lease, or the copy swept back into the line
# (taken out again). Returns the tokens whose lease is lost: another claim holds the job, or
# it was settled (by another run): those runs must stop and leave no trace.
_RENEW = (
    LUA_LIB
    + """
local now, lease, inprog = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local lost = {}
for i = 5, #ARGV, 2 do
  local m, token = ARGV[i], ARGV[i + 1]
  local c, job = split_member(m)
  if redis.call('HGET', QP .. 'holders', job) ~= token then
    lost[#lost + 1] = token
  elseif redis.call('PEXPIRE', inprog .. job, lease) == 1 then
    redis.call('ZADD', QP .. 'leases', 'XX', now + lease, m)
  elseif redis.call('ZSCORE', QP .. 'leases', m) then
    redis.call('SET', inprog .. job, token, 'PX', lease)
    redis.call('ZADD', QP .. 'leases', now + lease, m)
  elseif unqueue(c, job) then
    redis.call('HSET', QP .. 'holders', job, token)
    redis.call('SET', inprog .. job, token, 'PX', lease)
    redis.call('ZADD', QP .. 'leases', now + lease, m)
    redis.call('HINCRBY', QP .. 'running', kind_of(c) .. ':' .. owner_of(job), 1)
  end
end
return lost
"""
)

# ARGV: queue prefix, now ms, in-progress prefix, due ms ('' for now), then (member, token)
# pairs. A job whose run stopped here without an outcome (shutdown, a crash inside arq) runs
# again. Returns the tokens whose lease was lost (nothing done for those).
_HAND_BACK = (
    LUA_LIB
    + """
local now, inprog = ARGV[2], ARGV[3]
local due = ARGV[4]
if due == '' then due = now end
local lost = {}
for i = 5, #ARGV, 2 do
  local c, job = split_member(ARGV[i])
  if may_act(c, job, ARGV[i + 1]) then
    reschedule(c, job, due, now, inprog)
  else
    lost[#lost + 1] = ARGV[i + 1]
  end
end
return lost
"""
)

# ARGV: queue prefix, in-progress prefix, then (member, token) pairs. The job is over
# without a result of its own to record (arq gave up on it, or its record is gone): its
# lease is dropped and a copy re-queued after it lapsed is taken out too. Returns the tokens
# whose lease was lost (nothing done for those).
_SETTLE = (
    LUA_LIB
    + """
local lost = {}
for i = 3, #ARGV, 2 do
  local c, job = split_member(ARGV[i])
  if may_act(c, job, ARGV[i + 1]) then
    settle(c, job, ARGV[2])
    unqueue(c, job)
  else
    lost[#lost + 1] = ARGV[i + 1]
  end
end
return lost
"""
)


# ARGV: queue prefix, now ms, wake channel, then (class, job id, due ms) triples. Puts jobs
# whose arq job keys already exist in the queue (re-sends, tests).
_ENQUEUE = (
    LUA_LIB
    + """
for i = 4, #ARGV, 3 do enqueue(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[2]) end
redis.call('PUBLISH', ARGV[3], '1')
return 1
"""
)


class LeaseLost(Exception):
    """A claim's lease on a job is lost: another claim holds the job (or another run settled
    it). The script refused and changed nothing; the run must be dropped without a trace."""

    def __init__(self, job_id: str):
        super().__init__(job_id)
        self.job_id = job_id


def member(job_class: str, job_id: str) -> str:
    return f"{job_class}|{job_id}"


def split_member(value: str) -> tuple[str, str]:
    job_class, _, job_id = value.partition("|")
    return job_class, job_id


@dataclass(frozen=True, slots=True)
class Fairness:
    """How the queue shares turns: the batch side's guaranteed share of turns while
    interactive work waits, and per-tenant defaults (overridden in the tenant's hash)."""

    batch_share: float = 0.1
    weight: float = 1.0
    max_running: int = 1000
    max_deliveries: int = 50


@dataclass(frozen=True, slots=True)
class Lease:
    """A claim's hold on a job: the job's member ("<class>|<id>") and the claim's token."""

    member: str
    token: str


@dataclass(slots=True)
class ClaimedJob:
    job_id: str
    job_class: str
    job_input: JobInput | None  # None for deliveries, or when the task record is gone
    token: str = ""  # this claim's token: what shows the lease is still its own
    # arq's job (its serialised payload; None if the key is gone) and this run's try number
    # (arq's retry counter after the claim counted this run; 0: not read by the claim)
    payload: bytes | None = None
    job_try: int = 0

    @property
    def member(self) -> str:
        return member(self.job_class, self.job_id)

    @property
    def lease(self) -> Lease:
        return Lease(self.member, self.token)


def _lease_args(leases: Sequence[Lease]) -> list[str]:
    return [part for lease in leases for part in (lease.member, lease.token)]


def _tokens(reply: list[Any]) -> set[str]:
    return {token.decode() if isinstance(token, bytes) else token for token in reply}


class Scheduler:
    """Claims, renewals and hand-backs, for one process, over a shared Redis client."""

    def __init__(self, redis: Redis, keys: Keys, lease_s: float, fairness: Fairness):
        self.keys = keys
        self.lease_ms = int(lease_s * 1000)
        self.fairness = fairness
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._hand_back = redis.register_script(_HAND_BACK)
        self._settle = redis.register_script(_SETTLE)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._redis = redis
        # claim tokens are "<holder>:<claim call>.<n>": unique without a Redis round trip
        self._holder = uuid.uuid4().hex[:12]
        self._claims = itertools.count(1)
        # whether the last claim saw a tenant parked at its running limit (it comes back
        # when one of its jobs settles, so a worker settling one should look again)
        self.parked = False

    async def enqueue(self, jobs: list[tuple[str, str, int | None]]) -> None:
        """Queue (class, job id, due ms or None for now) whose arq job keys exist."""
        now = now_ms()
        args: list[Any] = [self.keys.queue_prefix, now, self.keys.wake]
        for job_class, job_id, due in jobs:
            args += [job_class, job_id, now if due is None else due]
        await self._enqueue(args=args)

    async def depth(self) -> dict[str, int]:
        """Jobs waiting to run now, by class (delayed and running jobs are not counted)."""
        raw = await self._redis.hgetall(self.keys.queue_prefix + "depth")  # type: ignore[misc]
        return {key.decode(): int(value) for key, value in raw.items()}

    async def claim(
        self, limit: int, classes: str = "ibh"
    ) -> tuple[list[ClaimedJob], float | None]:
        """Lease up to `limit` due jobs of the given classes, in class and fairness order;
        also the epoch second at which the next delayed job or lease falls due, if any."""
        fair = self.fairness
        reply: list[Any] = await self._claim(
            args=[
                self.keys.queue_prefix,
                self.keys.tenant_prefix,
                now_ms(),
                self.lease_ms,
                limit,
                fair.batch_share,
                fair.weight,
                fair.max_running,
                fair.max_deliveries,
                ARQ_IN_PROGRESS_PREFIX,
                self.keys.task_head,
                classes,
                f"{self._holder}:{next(self._claims)}",
                ARQ_JOB_PREFIX,
                ARQ_RETRY_PREFIX,
                *JOB_INPUT_FIELDS,
            ],
        )
        next_due = float(reply[0])
        self.parked = int(reply[1]) == 1
        jobs = []
        for i in range(2, len(reply), 5):
            job_class, job_id = split_member(reply[i].decode())
            _, _, index = job_id.rpartition(":")
            fields = reply[i + 2]
            job_input = job_input_from(fields, int(index)) if fields and index.isdigit() else None
            jobs.append(
                ClaimedJob(
                    job_id,
                    job_class,
                    job_input,
                    reply[i + 1].decode(),
                    reply[i + 3] or None,
                    int(reply[i + 4]),
                )
            )
        return jobs, (next_due / 1000 if next_due >= 0 else None)

    async def renew(self, leases: Sequence[Lease]) -> set[str]:
        """Extend these leases; the tokens of those lost (another claim holds the job, or
        it is settled): their runs must stop and leave no trace."""
        if not leases:
            return set()
        lost = await self._renew(
            args=[
                self.keys.queue_prefix,
                now_ms(),
                self.lease_ms,
                ARQ_IN_PROGRESS_PREFIX,
                *_lease_args(leases),
            ]
        )
        return _tokens(lost)

    async def hand_back(self, leases: Sequence[Lease], due_ms: int | None = None) -> set[str]:
        """Make jobs whose run ended here without an outcome due again (now, or later); the
        tokens of leases lost (those jobs were left alone)."""
        if not leases:
            return set()
        lost = await self._hand_back(
            args=[
                self.keys.queue_prefix,
                now_ms(),
                ARQ_IN_PROGRESS_PREFIX,
                "" if due_ms is None else due_ms,
                *_lease_args(leases),
            ]
        )
        return _tokens(lost)

    async def settle(self, leases: Sequence[Lease]) -> set[str]:
        """Jobs that are over without a result script of their own (arq gave up on them);
        the tokens of leases lost (those jobs were left alone)."""
        if not leases:
            return set()
        lost = await self._settle(
            args=[self.keys.queue_prefix, ARQ_IN_PROGRESS_PREFIX, *_lease_args(leases)]
        )
        return _tokens(lost)


async def outstanding(redis: Redis, keys: Keys) -> int:
    """Jobs waiting, scheduled or running (0: the queue has nothing left to do)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hvals(keys.queue_prefix + "depth")
        pipe.zcard(keys.queue_prefix + "delayed")
        pipe.zcard(keys.queue_prefix + "leases")
        depth, delayed, leased = await pipe.execute()
    return sum(int(value) for value in depth) + int(delayed) + int(leased)


def now_ms() -> int:
    return int(time.time() * 1000)
