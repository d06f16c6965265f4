"""Signed, expiring stream tokens: a task's event stream for a browser, without the API key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from redis.asyncio import Redis

from core.errors import AuthenticationFailed
from core.settings import Settings

_SECRET_KEY = "secret:stream-token"  # noqa: S105 (the Redis key that holds it)


async def load_secret(redis: Redis, settings: Settings) -> bytes:
    """The configured secret, else one generated once and shared through Redis by every API
    process (so any replica can check a token another one issued)."""
    if settings.stream_token_secret is not None:
        return settings.stream_token_secret.get_secret_value().encode()
    key = f"{settings.key_prefix}:{_SECRET_KEY}"
    await redis.set(key, secrets.token_urlsafe(32), nx=True)
    stored = await redis.get(key)
    if stored is None:  # only if Redis lost it between the two calls
        raise RuntimeError("stream token secret vanished from Redis")
    return bytes(stored)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class StreamTokens:
    """Tokens of the form `<owner>.<expiry>.<mac>`, the MAC binding owner, task and expiry."""

    def __init__(self, secret: bytes, ttl_s: int):
        self._secret = secret
        self.ttl_s = ttl_s

    def _mac(self, owner: str, task_uuid: str, expires: int) -> str:
        message = f"{owner}\n{task_uuid}\n{expires}".encode()
        return _b64(hmac.new(self._secret, message, hashlib.sha256).digest()[:20])

    def issue(self, owner: str, task_uuid: str, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + self.ttl_s
        return f"{owner}.{expires}.{self._mac(owner, task_uuid, expires)}"

    def stream_url(self, owner: str, task_uuid: str) -> str:
        return f"/v1/tasks/{task_uuid}/events?token={self.issue(owner, task_uuid)}"

    def verify(self, token: str, task_uuid: str, now: float | None = None) -> str:
        """The owner the token was issued to, if it is genuine, unexpired and for this task."""
        owner, _, rest = token.partition(".")
        expires_text, _, mac = rest.partition(".")
        if not owner or not expires_text.isdigit() or not mac:
            raise AuthenticationFailed("Malformed stream token.", code="invalidStreamToken")
        if not hmac.compare_digest(mac, self._mac(owner, task_uuid, int(expires_text))):
            raise AuthenticationFailed(
                "This stream token is not valid for this task.", code="invalidStreamToken"
            )
        if int(expires_text) < (now if now is not None else time.time()):
            raise AuthenticationFailed(
                "This stream token has expired; get a fresh streamURL with getResponse.",
                code="expiredStreamToken",
            )
        return owner
