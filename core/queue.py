"""The arq queue as taskwire's workers drive it: leased claims, renewals and hand-backs.

A claimed job's in-progress key is a lease (not arq's whole-job-timeout lock) and its queue
score moves to the lease's end, so it is invisible to other claimers until the lease lapses:
a killed worker's jobs reappear within one lease, and a queue read never wades through jobs
already running. A claim also reads each job's task record, saving the job a round trip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from core.keys import ARQ_IN_PROGRESS_PREFIX, Keys
from core.store import JOB_INPUT_FIELDS, JobInput, job_input_from

# KEYS[1] queue. ARGV: now ms, lease ms, limit, in-progress prefix, task-key head, fields...
# Returns the score of the next job due later (or -1), then per claimed job: id, score, and
# the HMGET of its task record's fields and result slot (for result jobs).
_CLAIM = """
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local ready = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
local claimed = {-1}
for i = 1, #ready, 2 do
  local id = ready[i]
  if redis.call('SET', ARGV[4] .. id, '1', 'NX', 'PX', lease) then
    redis.call('ZADD', KEYS[1], now + lease, id)
    local head, index = string.match(id, '^(.*):(%d+)$')
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = ready[i + 1]
    if head then
      local wanted = {unpack(fields)}
      wanted[#wanted + 1] = 'r:' .. index
      claimed[#claimed + 1] = redis.call('HMGET', ARGV[5] .. head .. '}', unpack(wanted))
    else
      claimed[#claimed + 1] = {}
    end
  end
end
local later = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if #later > 0 then claimed[1] = later[2] end
return claimed
"""

# Extend the leases of jobs still running (ARGV[4..]); a job already settled is skipped.
_RENEW = """
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
for i = 4, #ARGV do
  if redis.call('PEXPIRE', ARGV[3] .. ARGV[i], lease) == 1 then
    redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i])
  end
end
return 1
"""


@dataclass(slots=True)
class ClaimedJob:
    job_id: str
    score: int
    job_input: JobInput | None  # None when the task record is gone (or not one of ours)


class JobQueue:
    def __init__(self, redis: Redis, keys: Keys, lease_s: float):
        self.keys = keys
        self.lease_ms = int(lease_s * 1000)
        self._redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)

    async def claim(self, limit: int) -> tuple[list[ClaimedJob], float | None]:
        """Lease up to `limit` jobs that are due, oldest first; also the epoch second at
        which the next job falls due (a scheduled retry, or a lapsing lease), if any."""
        reply: list[Any] = await self._claim(
            keys=[self.keys.queue],
            args=[
                _now_ms(),
                self.lease_ms,
                limit,
                ARQ_IN_PROGRESS_PREFIX,
                self.keys.task_head,
                *JOB_INPUT_FIELDS,
            ],
        )
        next_due = float(reply[0])
        jobs = []
        for i in range(1, len(reply), 3):
            job_id = reply[i].decode()
            _, _, index = job_id.rpartition(":")
            fields = reply[i + 2]
            job_input = job_input_from(fields, int(index)) if fields and index.isdigit() else None
            jobs.append(ClaimedJob(job_id, int(float(reply[i + 1])), job_input))
        return jobs, (next_due / 1000 if next_due >= 0 else None)

    async def renew(self, job_ids: list[str]) -> None:
        if job_ids:
            await self._renew(
                keys=[self.keys.queue],
                args=[_now_ms(), self.lease_ms, ARQ_IN_PROGRESS_PREFIX, *job_ids],
            )

    async def hand_back(self, job_id: str) -> None:
        """Make a job whose run was cancelled here due now, not when its lease ends."""
        await self._redis.zadd(self.keys.queue, {job_id: _now_ms()}, xx=True)


def _now_ms() -> int:
    return int(time.time() * 1000)
