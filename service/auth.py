"""API keys: hashed when loaded, looked up by digest, never kept or logged in clear.

Two kinds of key are accepted: those from settings (TASKWIRE_API_KEYS, the dev key), and
keys managed at run time (core/apikeys.py, records in Redis). Each API process holds both in
memory, so authenticating a request is a SHA-256 and a dict lookup, never a Redis round trip;
`KeyRingSync` keeps the managed part current: a change is announced on a channel (the
process re-reads that one record), and the version is polled every `key_ring_poll_s` as a
safety net (a move re-reads them all), so a new, revoked or rotated key is in force on every
process within about a second, with no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from core.apikeys import ApiKeyStore, KeyRecord, iso
from core.errors import AuthenticationFailed
from core.events import Event, EventHub

log = structlog.get_logger("taskwire.auth")


def key_digest(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


def owner_id(digest: bytes) -> str:
    """The stable, non-secret id of a key's owner, used in Redis keys and logs."""
    return digest[:8].hex()


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    owner: str
    expires: float | None = None
    revoked: bool = False
    rotated: bool = False


class KeyRing:
    """The accepted API keys, as SHA-256 digests.

    A presented key is hashed and its digest looked up in a dict. The lookup's timing can
    only tell about the digest of the caller's own guess (SHA-256 gives no way to steer it
    towards a stored one), and the entry found is still compared with
    `hmac.compare_digest`. The clear keys are dropped once hashed.
    """

    def __init__(self, api_keys: Iterable[str]):
        self._static: dict[bytes, _Entry] = {}
        for key in api_keys:
            if key:
                digest = key_digest(key)
                self._static[digest] = _Entry(digest, owner_id(digest))
        self._managed: dict[bytes, _Entry] = {}

    def __len__(self) -> int:
        return len(self._static) + len(self._managed)

    @property
    def managed_count(self) -> int:
        return len(self._managed)

    def replace_managed(self, records: Iterable[KeyRecord]) -> None:
        """Swap in every managed key at once (a full re-read)."""
        self._managed = {entry.digest: entry for entry in map(_managed_entry, records)}

    def update_managed(self, digest: bytes, record: KeyRecord | None) -> None:
        """One managed key as Redis now holds it (None: gone)."""
        if record is None:
            self._managed.pop(digest, None)
        else:
            self._managed[digest] = _managed_entry(record)

    def authenticate(self, api_key: str | None, now: float | None = None) -> str:
        """The owner id for a valid key; AuthenticationFailed otherwise."""
        if not api_key:
            raise AuthenticationFailed(
                "Missing API key: send `Authorization: Bearer <key>` or an authentication "
                "task first.",
                code="missingApiKey",
            )
        presented = key_digest(api_key)
        # Keys from settings win over a managed record of the same key.
        entry = self._static.get(presented) or self._managed.get(presented)
        if entry is None or not hmac.compare_digest(presented, entry.digest) or entry.revoked:
            raise AuthenticationFailed("Invalid API key.", code="invalidApiKey")
        if entry.expires is not None and (time.time() if now is None else now) >= entry.expires:
            if entry.rotated:
                raise AuthenticationFailed(
                    f"This API key was replaced by a new one, and its grace period ended at "
                    f"{iso(entry.expires)}: use the new key.",
                    code="invalidApiKey",
                )
            raise AuthenticationFailed(
                f"This API key expired at {iso(entry.expires)}.", code="invalidApiKey"
            )
        return entry.owner


def _managed_entry(record: KeyRecord) -> _Entry:
    return _Entry(
        bytes.fromhex(record.digest),
        record.owner,
        expires=record.expires,
        revoked=record.revoked is not None,
        rotated=record.replaced_by is not None,
    )


class KeyRingSync:
    """Keeps a KeyRing's managed keys as Redis holds them: a change notice re-reads the keys
    it names, a version poll (and a lost or lagging subscription) re-reads all.

    Notices ("<version> {"digests": [...]}") come through the process's EventHub, on a
    channel subscribed raw, so an API process keeps one pub/sub connection for everything."""

    def __init__(self, ring: KeyRing, store: ApiKeyStore, hub: EventHub, poll_s: float = 1.0):
        self.ring = ring
        self.store = store
        self.hub = hub
        self.poll_s = poll_s
        self.version = -1
        self.reloads = 0  # full re-reads (tests and logs)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Subscribe, then read every key (so no change falls between the two)."""
        subscribed = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._listen(subscribed), name="key-ring-notices"),
            asyncio.create_task(self._poll(), name="key-ring-poll"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await asyncio.shield(subscribed)
        await self.reload()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reload(self) -> None:
        version, records = await self.store.load_all()
        self.ring.replace_managed(records)
        self.version = version
        self.reloads += 1
        log.info("auth.keys_loaded", managed=len(records), version=version)

    async def _listen(self, subscribed: asyncio.Future[None]) -> None:
        channel = self.store.keys.apikey_changes
        async with self.hub.subscribe(channel, task_events=False) as sub:
            await sub.ready()
            subscribed.set_result(None)
            while True:
                item = await sub.get()
                try:
                    if isinstance(item, Event):
                        await self._apply(item.id, item.raw)
                    else:  # the hub reconnected or this reader lagged: notices may be lost
                        await self.reload()
                except Exception as exc:
                    log.warning("auth.keys_notice_failed", error=type(exc).__name__)
                    self.version = -1  # the poll re-reads everything once Redis answers

    async def _apply(self, version_text: str, payload: bytes) -> None:
        digests = json.loads(payload).get("digests") if payload else None
        if not isinstance(digests, list):
            await self.reload()
            return
        for digest in digests:
            record = await self.store.get(str(digest))
            self.ring.update_managed(bytes.fromhex(str(digest)), record)
        if int(version_text) == self.version + 1:
            self.version = int(version_text)  # caught up: the poll has nothing to re-read

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                if await self.store.version() != self.version:
                    await self.reload()
            except Exception as exc:
                log.warning("auth.keys_poll_failed", error=type(exc).__name__)
