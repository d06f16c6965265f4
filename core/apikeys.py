"""API keys managed at run time: records in Redis, hashed, never kept in clear.

Layout (names in core/keys.py):

* `tw:apikey:<sha256 hex>` — one hash per key: owner, name, created, and when set expires,
  revoked, replaced_by (the key id of its successor after a rotation). The key itself is
  never stored: only its SHA-256 digest, which names the record.
* `tw:apikeys` — the set of every managed key's digest (what API processes load).
* `tw:owner:<owner>` — the owner: name, created; `tw:owner:<owner>:keys` its keys' digests.
  Tasks, limits, webhook secrets and images are all scoped to the owner id, so a rotated key
  (a new key for the same owner) sees everything the old one did.
* Limits stay where the scheduler and the limit scripts read them, the tenant hash
  `tw:tenant:<owner>` (one source of truth): set-limits writes its fields and marks it
  `limits_src=runtime`, which startup overrides leave alone unless they name the owner.
* `tw:apikeys:version` — bumped by every change, and the change announced on
  `tw:apikeys:changed` as "<version> {"digests": [...]}", so every API process re-reads
  the records named at once, and a process that missed the message
  sees the version move on its next poll and re-reads them all.

Owners have a record of their own rather than fields in the tenant hash: the tenant hash is
what the Lua scripts read, exists for every owner (settings' keys too) and has its limit
fields rewritten by startup overrides and `set-limits --reset`; names, creation times and
key sets are read only by the CLI and the admin API, and kept apart nothing can clear them.

A new owner's id is the first 8 bytes of its first key's digest (as for keys from settings),
so a key and its owner read alike in logs; it stays the owner's id through rotations.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from redis.asyncio import Redis

from core.keys import Keys
from core.limits import TENANT_FIELDS

KEY_PREFIX = "twk_"  # recognisable by secret scanners; 32 random bytes follow
KEY_ID_CHARS = 12  # hex digits of the digest shown as a key's id (not secret)
OWNER_ID_CHARS = 16
LIMITS_SOURCE = "limits_src"  # tenant hash field: "runtime" when set-limits wrote them
RUNTIME = "runtime"


class KeyNotFound(LookupError):
    """No managed key (or owner) matches; the message names what was looked for."""


class KeyConflict(ValueError):
    """The change does not apply to the key as it is (revoked, ambiguous id, ...)."""


def digest_hex(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def is_owner_id(text: str) -> bool:
    return len(text) == OWNER_ID_CHARS and all(ch in "0123456789abcdef" for ch in text)


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    digest: str  # hex
    owner: str
    name: str
    created: float
    expires: float | None = None
    revoked: float | None = None
    replaced_by: str | None = None  # key id of the key that replaced it (rotate)

    @property
    def key_id(self) -> str:
        return self.digest[:KEY_ID_CHARS]

    def status(self, now: float | None = None) -> str:
        moment = time.time() if now is None else now
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and moment >= self.expires:
            return "expired"
        if self.replaced_by is not None:
            return "rotating"  # still valid, until its grace window ends
        return "active"

    def public(self, now: float | None = None) -> dict[str, object]:
        """What list and the admin API show: never the key, only its id."""
        return {
            "keyId": self.key_id,
            "owner": self.owner,
            "name": self.name,
            "status": self.status(now),
            "created": iso(self.created),
            "expires": iso(self.expires),
            "revoked": iso(self.revoked),
            "replacedBy": self.replaced_by,
        }


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: the only moment its clear text exists outside the client."""

    api_key: str
    record: KeyRecord


def record_from(digest: str, raw: Mapping[bytes, bytes]) -> KeyRecord | None:
    if b"owner" not in raw:
        return None

    def number(field: bytes) -> float | None:
        value = raw.get(field)
        return float(value) if value else None

    replaced = raw.get(b"replaced_by")
    return KeyRecord(
        digest=digest,
        owner=raw[b"owner"].decode(),
        name=raw.get(b"name", b"").decode(),
        created=number(b"created") or 0.0,
        expires=number(b"expires"),
        revoked=number(b"revoked"),
        replaced_by=replaced.decode() if replaced else None,
    )


class ApiKeyStore:
    """Create, list, revoke and rotate managed keys; read and set an owner's limits.

    Every change is one MULTI/EXEC that also bumps the version and publishes the change, so
    an API process never sees a record without hearing of it (or seeing the version move).
    """

    def __init__(self, redis: Redis, keys: Keys):
        self.redis = redis
        self.keys = keys

    # --- reading

    async def version(self) -> int:
        value = await self.redis.get(self.keys.apikey_version)
        return int(value) if value else 0

    async def get(self, digest: str) -> KeyRecord | None:
        raw = await self.redis.hgetall(self.keys.apikey(digest))  # type: ignore[misc]
        return record_from(digest, raw)

    async def load_all(self, batch: int = 1000) -> tuple[int, list[KeyRecord]]:
        """Every managed key, and the version read before them (a change after the read of
        the version makes the next poll read again, never the other way round)."""
        version = await self.version()
        digests = sorted(m.decode() for m in await self.redis.smembers(self.keys.apikey_index))  # type: ignore[misc]
        records: list[KeyRecord] = []
        for start in range(0, len(digests), batch):
            chunk = digests[start : start + batch]
            async with self.redis.pipeline(transaction=False) as pipe:
                for digest in chunk:
                    pipe.hgetall(self.keys.apikey(digest))
                raws = await pipe.execute()
            for digest, raw in zip(chunk, raws, strict=True):
                found = record_from(digest, raw)
                if found is not None:
                    records.append(found)
        return version, records

    async def list(self) -> list[KeyRecord]:
        _, records = await self.load_all()
        return sorted(records, key=lambda r: (r.created, r.digest))

    async def resolve(self, key_id: str) -> KeyRecord:
        """The one key whose id (digest hex) starts with `key_id` (at least 8 digits)."""
        prefix = key_id.strip().lower()
        if len(prefix) < 8 or any(ch not in "0123456789abcdef" for ch in prefix):
            raise KeyNotFound("a key id is 8 to 64 hex digits (as `list` shows them)")
        found = [
            member.decode()
            async for member in self.redis.sscan_iter(self.keys.apikey_index, match=prefix + "*")
        ]
        if not found:
            raise KeyNotFound(f"no managed key has the id {prefix}")
        if len(found) > 1:
            raise KeyConflict(f"{len(found)} keys have ids starting {prefix}: give more digits")
        record = await self.get(found[0])
        if record is None:
            raise KeyNotFound(f"no managed key has the id {prefix}")
        return record

    async def owner_exists(self, owner: str) -> bool:
        return bool(await self.redis.exists(self.keys.owner(owner)))

    # --- changing

    async def create(
        self, name: str, *, expires: float | None = None, owner: str | None = None
    ) -> NewKey:
        """A new key: for a new owner, or another key of an existing one (`owner`)."""
        if owner is not None and not await self.owner_exists(owner):
            raise KeyNotFound(f"no managed owner has the id {owner}")
        for _ in range(5):
            api_key = new_api_key()
            digest = digest_hex(api_key)
            key_owner = owner or digest[:OWNER_ID_CHARS]
            if owner is None and await self.owner_exists(key_owner):
                continue  # 64-bit ids: a clash is not expected, but never share an owner
            record = KeyRecord(digest, key_owner, name, time.time(), expires=expires)
            async with self.redis.pipeline(transaction=True) as pipe:
                if owner is None:
                    pipe.hset(
                        self.keys.owner(key_owner),
                        mapping={"name": name, "created": repr(record.created)},
                    )
                self._write(pipe, record)
                await self._announce(pipe, digest)
            return NewKey(api_key, record)
        raise RuntimeError("could not draw an unused owner id")  # pragma: no cover

    async def revoke(self, key_id: str) -> KeyRecord:
        record = await self.resolve(key_id)
        if record.revoked is not None:
            return record
        revoked = replace(record, revoked=time.time())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.apikey(record.digest), "revoked", repr(revoked.revoked))
            await self._announce(pipe, record.digest)
        return revoked

    async def rotate(
        self,
        key_id: str,
        *,
        grace_s: float,
        name: str | None = None,
        expires: float | None = None,
    ) -> tuple[NewKey, KeyRecord]:
        """A new key for the old one's owner (so its tasks, limits and webhook secret); the
        old key stays valid for `grace_s` more seconds (0: refused at once), unless it was
        to expire sooner. Returns the new key and the old key's record as it now is."""
        old = await self.resolve(key_id)
        now = time.time()
        if old.status(now) in ("revoked", "expired"):
            raise KeyConflict(f"key {old.key_id} is {old.status(now)}: create a new one instead")
        api_key = new_api_key()
        digest = digest_hex(api_key)
        record = KeyRecord(digest, old.owner, name or old.name, now, expires=expires)
        until = now + grace_s
        if old.expires is not None:
            until = min(until, old.expires)
        old_fields: dict[str, str] = {"replaced_by": record.key_id}
        if grace_s <= 0:
            old_fields["revoked"] = repr(now)
        else:
            old_fields["expires"] = repr(until)
        async with self.redis.pipeline(transaction=True) as pipe:
            self._write(pipe, record)
            pipe.hset(self.keys.apikey(old.digest), mapping=old_fields)
            await self._announce(pipe, digest, old.digest)
        after = replace(
            old,
            replaced_by=record.key_id,
            revoked=now if grace_s <= 0 else old.revoked,
            expires=old.expires if grace_s <= 0 else until,
        )
        return NewKey(api_key, record), after

    def _write(self, pipe: object, record: KeyRecord) -> None:
        fields = {"owner": record.owner, "name": record.name, "created": repr(record.created)}
        if record.expires is not None:
            fields["expires"] = repr(record.expires)
        pipe.hset(self.keys.apikey(record.digest), mapping=fields)  # type: ignore[attr-defined]
        pipe.sadd(self.keys.apikey_index, record.digest)  # type: ignore[attr-defined]
        pipe.sadd(self.keys.owner_keys(record.owner), record.digest)  # type: ignore[attr-defined]

    async def _announce(self, pipe: object, *digests: str) -> None:
        """Bump the version and publish the change, in the caller's transaction."""
        pipe.incr(self.keys.apikey_version)  # type: ignore[attr-defined]
        results = await pipe.execute()  # type: ignore[attr-defined]
        version = results[-1]
        await self.redis.publish(
            self.keys.apikey_changes, f"{version} {json.dumps({'digests': list(digests)})}"
        )

    # --- limits (the tenant hash: what the scheduler and the limit scripts read)

    async def limits(self, owner: str) -> dict[str, float]:
        raw = await self.redis.hgetall(self.keys.tenant(owner))  # type: ignore[misc]
        found: dict[str, float] = {}
        for name, field in TENANT_FIELDS.items():
            value = raw.get(field.encode())
            if value is not None:
                found[name] = float(value)
        return found

    async def limits_source(self, owner: str) -> str | None:
        value = await self.redis.hget(self.keys.tenant(owner), LIMITS_SOURCE)  # type: ignore[misc]
        return value.decode() if value else None

    async def set_limits(
        self, owner: str, values: Mapping[str, float], reset: Iterable[str] = ()
    ) -> dict[str, float]:
        """Set some of an owner's limits (names as in KeyLimits) and drop others back to the
        defaults; in force for the next request of any process (the scripts read the hash).
        Returns the owner's limits as they now are."""
        unknown = sorted((set(values) | set(reset)) - set(TENANT_FIELDS))
        if unknown:
            raise KeyConflict(f"unknown limits: {', '.join(unknown)}")
        tenant = self.keys.tenant(owner)
        async with self.redis.pipeline(transaction=True) as pipe:
            dropped = [TENANT_FIELDS[name] for name in reset if name not in values]
            if dropped:
                pipe.hdel(tenant, *dropped)
            if values:
                pipe.hset(
                    tenant,
                    mapping={TENANT_FIELDS[name]: number(v) for name, v in values.items()},
                )
            pipe.hset(tenant, LIMITS_SOURCE, RUNTIME)
            await pipe.execute()
        return await self.limits(owner)


def number(value: float) -> str:
    """As Lua's tonumber reads it, and people too: "2", not "2.0"."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
