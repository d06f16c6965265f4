"""What the operator console shows, read from Redis in a few bounded round trips each.

Every read here is capped, whatever the size of the fleet: no KEYS, no unbounded SCAN or
HGETALL of a structure that grows with the number of tenants. Queue depth by key looks at
the keys with ready work in each class's index, those parked at their running limit and
those with jobs running (each read bounded), counts their lines, and keeps the busiest
`MAX_OWNERS`; running jobs are the first `MAX_RUNNING` leases; failing webhook receivers
are the `MAX_HOSTS` with the latest failures, each with a sample of its deliveries; keys are
at most `MAX_KEYS` managed ones plus those from settings. A list cut short says so
(`truncated`). Rendering (service/console.py) turns these into JSON as they are.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis

from core.apikeys import KeyRecord, iso, record_from
from core.catalog import Catalog
from core.deliveries import DeliveryState
from core.keys import Keys
from core.limits import TENANT_FIELDS
from core.metrics import CLASS_NAMES

MAX_OWNERS = 100
MAX_CANDIDATES = 400  # owners looked at before keeping the busiest MAX_OWNERS
MAX_RUNNING = 100
MAX_HOSTS = 50
HOST_SAMPLE = 20
MAX_KEYS = 200
SCAN_COUNT = 200

# KEYS: leases. ARGV: task-key head, how many. The first leases (soonest to lapse), each
# with its task's creation time and model (matched in the stored request, which never
# leaves Redis): member, lease end ms, created ms, model.
_RUNNING = """
local leases = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #leases, 2 do
  local job = string.match(leases[i], '^%a|(.*)$') or ''
  local owner, uuid = string.match(job, '^([^:]+):([^:]+):%d+')
  local created, model = '', ''
  if owner then
    local got = redis.call('HMGET', ARGV[1] .. owner .. ':' .. uuid .. '}', 'created', 'req')
    created = got[1] or ''
    if got[2] then model = string.match(got[2], '"model":"([^"]*)"') or '' end
  end
  out[#out + 1] = leases[i]
  out[#out + 1] = leases[i + 1]
  out[#out + 1] = created
  out[#out + 1] = model
end
return out
"""


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _iso_ms(ms: float | None) -> str | None:
    if not ms:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{int(ms % 1000):03d}Z"


def split_job(job_id: str) -> tuple[str, str, int, bool]:
    """(owner, taskUUID, result index, is a webhook delivery) of a job id."""
    parts = job_id.split(":")
    delivery = parts[-1] == "webhook"
    if delivery:
        parts = parts[:-1]
    index = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
    return parts[0], parts[1] if len(parts) > 1 else "", index, delivery


class ConsoleReader:
    """The console's reads, over a shared Redis client."""

    def __init__(self, redis: Redis, keys: Keys):
        self.redis = redis
        self.keys = keys
        self._running = redis.register_script(_RUNNING)

    # --- the queue

    async def queue(self) -> dict[str, Any]:
        qp = self.keys.queue_prefix
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(qp + "depth")
            pipe.zcard(qp + "delayed")
            pipe.zcard(qp + "leases")
            pipe.hgetall(qp + "started")
            for code in CLASS_NAMES:
                pipe.zrange(qp + f"tenants:{code}", 0, MAX_OWNERS - 1)
                pipe.zcard(qp + f"tenants:{code}")
            pipe.sscan(qp + "blocked:r", 0, count=SCAN_COUNT)
            pipe.sscan(qp + "blocked:h", 0, count=SCAN_COUNT)
            pipe.hscan(qp + "running", 0, count=SCAN_COUNT)
            pipe.hscan(qp + "queued", 0, count=SCAN_COUNT)
            replies = await pipe.execute()
        depth, delayed, leased, started = replies[:4]
        candidates: dict[str, None] = {}
        active: dict[str, int] = {}
        for i, code in enumerate(CLASS_NAMES):
            for owner in replies[4 + 2 * i]:
                candidates.setdefault(_text(owner))
            active[code] = int(replies[5 + 2 * i])
        blocked_r, blocked_h, running, queued = replies[10:14]
        for owner in [*blocked_r[1], *blocked_h[1]]:
            candidates.setdefault(_text(owner))
        for field, value in running[1].items():
            if int(value) > 0:
                candidates.setdefault(_text(field).partition(":")[2])
        for field, value in queued[1].items():
            if int(value) > 0:
                candidates.setdefault(_text(field))
        owners = [owner for owner in candidates if owner][:MAX_CANDIDATES]
        rows = await self._owner_rows(owners)
        rows.sort(key=lambda r: (-(r["waiting"]["total"] + r["running"]["total"]), r["owner"]))
        more = (
            len(owners) > MAX_OWNERS
            or any(n > MAX_OWNERS for n in active.values())
            or any(int(cursor) != 0 for cursor, _ in replies[10:14])
        )
        waiting = {key.decode(): int(value) for key, value in depth.items()}
        ever = {key.decode(): int(value) for key, value in started.items()}
        return {
            "classes": [
                {
                    "class": name,
                    "waiting": max(0, waiting.get(code, 0)),
                    "keysWaiting": active[code],
                    "startedTotal": ever.get(code, 0),
                }
                for code, name in CLASS_NAMES.items()
            ],
            "scheduled": int(delayed),
            "leased": int(leased),
            "byKey": rows[:MAX_OWNERS],
            "truncated": more,
        }

    async def _owner_rows(self, owners: Sequence[str]) -> list[dict[str, Any]]:
        qp = self.keys.queue_prefix
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                for code in CLASS_NAMES:
                    pipe.zcard(qp + f"ready:{code}:{owner}")
                pipe.hmget(qp + "running", [f"r:{owner}", f"h:{owner}"])
                pipe.sismember(qp + "blocked:r", owner)
                pipe.sismember(qp + "blocked:h", owner)
                pipe.hget(self.keys.owner(owner), "name")
            replies = await pipe.execute()
        rows = []
        step = len(CLASS_NAMES) + 4
        for n, owner in enumerate(owners):
            got = replies[n * step : (n + 1) * step]
            counts = {name: int(got[i]) for i, name in enumerate(CLASS_NAMES.values())}
            results, deliveries = (int(v or 0) for v in got[3])
            rows.append(
                {
                    "owner": owner,
                    "name": _text(got[6]) or None,
                    "waiting": {**counts, "total": sum(counts.values())},
                    "running": {
                        "results": results,
                        "deliveries": deliveries,
                        "total": results + deliveries,
                    },
                    "atLimit": {"results": bool(got[4]), "deliveries": bool(got[5])},
                }
            )
        return rows

    async def running(self, limit: int = MAX_RUNNING) -> dict[str, Any]:
        """Jobs holding a lease now (running, or a dead worker's until the lease lapses)."""
        reply = await self._running(
            keys=[self.keys.queue_prefix + "leases"], args=[self.keys.task_head, limit]
        )
        total = await self.redis.zcard(self.keys.queue_prefix + "leases")
        now_ms = time.time() * 1000
        jobs = []
        for i in range(0, len(reply), 4):
            job_class, _, job_id = _text(reply[i]).partition("|")
            owner, uuid, index, delivery = split_job(job_id)
            created = float(_text(reply[i + 2]) or 0)
            jobs.append(
                {
                    "class": CLASS_NAMES.get(job_class, job_class),
                    "kind": "delivery" if delivery else "result",
                    "owner": owner,
                    "taskUUID": uuid,
                    "resultIndex": index,
                    "model": _text(reply[i + 3]) or None,
                    "leaseEndsAt": _iso_ms(float(reply[i + 1])),
                    "taskAgeS": round((now_ms - created) / 1000, 1) if created else None,
                }
            )
        return {"total": int(total), "jobs": jobs, "truncated": int(total) > len(jobs)}

    # --- routes

    async def routes(self, catalog: Catalog, threshold: int, cooldown_s: float) -> dict[str, Any]:
        models = list(catalog)
        async with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.hgetall(self.keys.route_health(model.air))
            healths = await pipe.execute()
        now = time.time()
        rows = []
        for model, raw in zip(models, healths, strict=True):
            fields = {_text(k): _text(v) for k, v in raw.items()}
            for route in model.routes:
                until = float(fields.get(f"{route.name}:until") or 0)
                rows.append(
                    {
                        "model": model.air,
                        "route": route.name,
                        "adapter": route.adapter,
                        "failuresInARow": int(fields.get(f"{route.name}:fails") or 0),
                        "coolingDown": until > now,
                        "coolingUntil": iso(until) if until > now else None,
                        "lastCooldownEnded": iso(until) if 0 < until <= now else None,
                        "secondsLeft": round(until - now, 1) if until > now else 0,
                    }
                )
        return {"threshold": threshold, "cooldownS": cooldown_s, "routes": rows}

    # --- webhooks

    async def webhooks(self) -> dict[str, Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrevrange(self.keys.failing_hosts, 0, MAX_HOSTS - 1, withscores=True)
            pipe.zcard(self.keys.failing_hosts)
            pipe.zcard(self.keys.pending_deliveries)
            hosts_raw, host_count, pending = await pipe.execute()
        hosts = [(_text(host), float(score)) for host, score in hosts_raw]
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for host, _ in hosts:
                pipe.zcard(self.keys.failing_deliveries(host))
                pipe.zrevrange(
                    self.keys.failing_deliveries(host), 0, HOST_SAMPLE - 1, withscores=True
                )
                pipe.zcount(self.keys.webhook_host(host), now_ms, "+inf")
            per_host = await pipe.execute()
        samples = [
            [(_text(job), float(score)) for job, score in per_host[3 * n + 1]]
            for n in range(len(hosts))
        ]
        states = await self._delivery_states([job for sample in samples for job, _ in sample])
        rows = []
        stale: list[tuple[str, str]] = []
        for n, (host, latest) in enumerate(hosts):
            deliveries = []
            for job_id, failed_at in samples[n]:
                found = states.get(job_id)
                if found is None or found[0].state == "delivered":
                    stale.append((host, job_id))
                    continue
                state, on_its_way = found
                owner, uuid, index, _ = split_job(job_id)
                deliveries.append(
                    {
                        "id": job_id,
                        "owner": owner,
                        "taskUUID": uuid,
                        "resultIndex": index,
                        "lastFailureAt": _iso_ms(failed_at),
                        "attempting": on_its_way,
                        **state.public(),
                    }
                )
            total = int(per_host[3 * n]) - sum(1 for h, _ in stale if h == host)
            if total <= 0 and not deliveries:
                continue
            rows.append(
                {
                    "host": host,
                    "failing": total,
                    "lastFailureAt": _iso_ms(latest),
                    "inFlight": int(per_host[3 * n + 2]),
                    "deliveries": deliveries,
                }
            )
        await self.forget(stale)
        return {
            "pendingDeliveries": int(pending),
            "hosts": rows,
            "truncated": int(host_count) > len(hosts),
        }

    async def _delivery_states(
        self, job_ids: Iterable[str]
    ) -> dict[str, tuple[DeliveryState, bool]]:
        """Each delivery's state and whether an attempt holds its lease now (None: gone)."""
        ids = list(job_ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                owner, uuid, index, _ = split_job(job_id)
                pipe.hget(f"{self.keys.task_head}{owner}:{uuid}}}", f"w:{index}")
                pipe.zscore(self.keys.queue_prefix + "leases", f"h|{job_id}")
            replies = await pipe.execute()
        found: dict[str, tuple[DeliveryState, bool]] = {}
        for n, job_id in enumerate(ids):
            raw, lease = replies[2 * n], replies[2 * n + 1]
            if raw is not None:
                found[job_id] = (DeliveryState.from_json(raw), lease is not None)
        return found

    async def forget(self, stale: Sequence[tuple[str, str]]) -> None:
        """Drop index entries whose delivery is gone or was delivered meanwhile."""
        if not stale:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for host, job_id in stale:
                pipe.zrem(self.keys.failing_deliveries(host), job_id)
            await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            hosts = sorted({host for host, _ in stale})
            for host in hosts:
                pipe.exists(self.keys.failing_deliveries(host))
            left = await pipe.execute()
        empty = [host for host, exists in zip(hosts, left, strict=True) if not exists]
        if empty:
            await self.redis.zrem(self.keys.failing_hosts, *empty)

    async def failing_ids(self, host: str, limit: int = 1000) -> list[str]:
        """A host's failing deliveries, newest first (what a re-send of the host sends)."""
        raw = await self.redis.zrevrange(self.keys.failing_deliveries(host), 0, limit - 1)
        return [_text(job) for job in raw]

    # --- keys

    async def managed_keys(self, limit: int = MAX_KEYS) -> tuple[list[KeyRecord], bool]:
        """Up to `limit` managed keys (a bounded SSCAN), and whether there were more."""
        digests: list[str] = []
        cursor = 0
        while True:
            cursor, batch = await self.redis.sscan(self.keys.apikey_index, cursor, count=SCAN_COUNT)
            digests.extend(_text(d) for d in batch)
            if cursor == 0 or len(digests) >= limit:
                break
        more = len(digests) > limit or cursor != 0
        digests = sorted(set(digests))[:limit]
        async with self.redis.pipeline(transaction=False) as pipe:
            for digest in digests:
                pipe.hgetall(self.keys.apikey(digest))
            raws = await pipe.execute()
        records = [record_from(d, raw) for d, raw in zip(digests, raws, strict=True)]
        return [r for r in records if r is not None], more

    async def usage(self, owners: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per owner: what it has queued and running, its upstream tokens this minute and
        the last, its tasks in the last hour and in retention, its own limits and name."""
        qp = self.keys.queue_prefix
        now = time.time()
        minute = int(now // 60)
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.get(self.keys.token_usage(owner, minute))
                pipe.get(self.keys.token_usage(owner, minute - 1))
                pipe.hget(qp + "queued", owner)
                pipe.hmget(qp + "running", [f"r:{owner}", f"h:{owner}"])
                pipe.zcard(self.keys.task_index(owner))
                pipe.zcount(self.keys.task_index(owner), (now - 3600) * 1000, "+inf")
                pipe.hgetall(self.keys.tenant(owner))
                pipe.hget(self.keys.owner(owner), "name")
            replies = await pipe.execute()
        found = {}
        for n, owner in enumerate(owners):
            tpm, tpm_last, queued, running, tasks, last_hour, tenant, name = replies[
                8 * n : 8 * n + 8
            ]
            fields = {_text(k): _text(v) for k, v in tenant.items()}
            limits = {
                name_: float(fields[field])
                for name_, field in TENANT_FIELDS.items()
                if field in fields
            }
            found[owner] = {
                "name": _text(name) or None,
                "tokensThisMinute": int(tpm or 0),
                "tokensLastMinute": int(tpm_last or 0),
                "queued": max(0, int(queued or 0)),
                "runningResults": int(running[0] or 0),
                "runningDeliveries": int(running[1] or 0),
                "tasksLastHour": int(last_hour),
                "tasksRetained": int(tasks),
                "limits": limits,
            }
        return found
