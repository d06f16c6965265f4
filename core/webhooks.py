"""Webhook signing (Standard Webhooks), per-key secrets with rotation, and the retry schedule."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from core.keys import Keys

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, as the specification defines."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, to_sign, hashlib.sha256).digest()).decode()


def signature_header(
    secrets_in_use: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> str:
    """Every current signature, space-separated (two during a secret rotation)."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets_in_use)


def message_id(task_uuid: str, result_index: int) -> str:
    """The same on every attempt for one result, so receivers can de-duplicate."""
    return f"msg_{task_uuid.replace('-', '')}_{result_index}"


@dataclass(frozen=True, slots=True)
class SecretState:
    current: str
    previous: str | None
    previous_until: float | None  # epoch seconds

    def in_use(self, now: float | None = None) -> list[str]:
        moment = time.time() if now is None else now
        found = [self.current]
        if self.previous and self.previous_until is not None and moment < self.previous_until:
            found.append(self.previous)
        return found


class WebhookSecrets:
    """Each API key owner's signing secret, kept in Redis and created on first use."""

    def __init__(self, redis: Redis, keys: Keys):
        self._redis = redis
        self._keys = keys

    async def get(self, owner: str) -> SecretState:
        key = self._keys.webhook_secret(owner)
        raw = await self._redis.hgetall(key)  # type: ignore[misc]
        if not raw:  # first use: create it (once, whichever process gets there first)
            await self._redis.hsetnx(key, "current", new_secret())  # type: ignore[misc]
            raw = await self._redis.hgetall(key)  # type: ignore[misc]
        return _state(raw)

    async def rotate(self, owner: str, window_s: float) -> SecretState:
        """A new current secret; the old one keeps signing for `window_s` seconds."""
        before = await self.get(owner)
        key = self._keys.webhook_secret(owner)
        fresh = new_secret()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "current": fresh,
                    "previous": before.current,
                    "previous_until": str(time.time() + window_s),
                },
            )
            await pipe.execute()
        return SecretState(fresh, before.current, time.time() + window_s)


def _state(raw: dict[bytes, bytes]) -> SecretState:
    previous_until = raw.get(b"previous_until")
    return SecretState(
        current=raw[b"current"].decode(),
        previous=raw[b"previous"].decode() if b"previous" in raw else None,
        previous_until=float(previous_until) if previous_until else None,
    )


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Delays before each attempt (the first is usually 0), with proportional jitter."""

    delays_s: tuple[float, ...]
    jitter: float = 0.1

    @property
    def attempts(self) -> int:
        return len(self.delays_s)

    def delay_before(self, attempt: int) -> float | None:
        """Seconds to wait before attempt number `attempt` (1-based); None past the end."""
        if attempt > len(self.delays_s):
            return None
        base = self.delays_s[attempt - 1]
        return base * (1 + random.uniform(-self.jitter, self.jitter)) if base else 0.0
