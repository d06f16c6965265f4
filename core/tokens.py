"""Signed, expiring URL tokens: a task's event stream or an uploaded image, without the API key.

A token is `<owner>.<expiry>.<mac>`, the HMAC binding its purpose (stream or image), the
owner, the resource (task or image UUID) and the expiry. The secret is shared by every
process through Redis (or configured), so a token issued by one API replica or worker is
checked by any other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from urllib.parse import quote

from redis.asyncio import Redis

from core.errors import AuthenticationFailed
from core.settings import Settings

_SECRET_KEY = "secret:stream-token"  # noqa: S105 (the Redis key that holds it)


async def load_secret(redis: Redis, settings: Settings) -> bytes:
    """The configured secret, else one generated once and shared through Redis by every
    process (so any replica can check a token another one issued)."""
    if settings.stream_token_secret is not None:
        return settings.stream_token_secret.get_secret_value().encode()
    key = f"{settings.key_prefix}:{_SECRET_KEY}"
    await redis.set(key, secrets.token_urlsafe(32), nx=True)
    stored = await redis.get(key)
    if stored is None:  # only if Redis lost it between the two calls
        raise RuntimeError("token secret vanished from Redis")
    return bytes(stored)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Signer:
    """Tokens for one purpose ("stream", "image"): issued for an owner and a resource, checked
    in constant time. Error codes name the purpose (`invalidStreamToken`, ...)."""

    def __init__(self, secret: bytes, purpose: str, ttl_s: int, expired_hint: str):
        self._secret = secret
        self.purpose = purpose
        self.ttl_s = ttl_s
        self._expired_hint = expired_hint
        self._name = purpose.capitalize()

    def _mac(self, owner: str, resource: str, expires: int) -> str:
        message = f"{self.purpose}\n{owner}\n{resource}\n{expires}".encode()
        return _b64(hmac.new(self._secret, message, hashlib.sha256).digest()[:20])

    def issue(self, owner: str, resource: str, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + self.ttl_s
        return f"{owner}.{expires}.{self._mac(owner, resource, expires)}"

    def verify(self, token: str, resource: str, now: float | None = None) -> str:
        """The owner the token was issued to, if it is genuine, unexpired and for this
        resource (AuthenticationFailed otherwise)."""
        owner, _, rest = token.partition(".")
        expires_text, _, mac = rest.partition(".")
        if not owner or not expires_text.isdigit() or len(expires_text) > 12 or not mac:
            raise AuthenticationFailed(
                f"Malformed {self.purpose} token.", code=f"invalid{self._name}Token"
            )
        if not hmac.compare_digest(mac, self._mac(owner, resource, int(expires_text))):
            raise AuthenticationFailed(
                f"This {self.purpose} token is not valid for this resource.",
                code=f"invalid{self._name}Token",
            )
        if int(expires_text) < (now if now is not None else time.time()):
            raise AuthenticationFailed(
                f"This {self.purpose} token has expired; {self._expired_hint}.",
                code=f"expired{self._name}Token",
            )
        return owner


class StreamTokens(Signer):
    """Tokens of a task's `links.stream`: its event stream for a browser."""

    def __init__(self, secret: bytes, ttl_s: int):
        super().__init__(secret, "stream", ttl_s, "get a fresh stream link with getResponse")

    def stream_path(self, owner: str, task_uuid: str) -> str:
        # The token names the task by its canonical (lower-case) UUID; the path keeps the
        # client's spelling, which the stream echoes.
        token = quote(self.issue(owner, task_uuid.lower()), safe=".")
        return f"/v1/tasks/{task_uuid}/events?token={token}"

    def stream_url(self, base_url: str, owner: str, task_uuid: str) -> str:
        """The absolute stream link on the API's public base URL."""
        return base_url.rstrip("/") + self.stream_path(owner, task_uuid)


class ImageTokens(Signer):
    """Tokens of an uploaded image's signed `imageURL`."""

    def __init__(self, secret: bytes, ttl_s: int):
        super().__init__(secret, "image", ttl_s, "upload the image again")

    def image_url(self, base_url: str, owner: str, image_uuid: str, extension: str) -> str:
        """The absolute, signed URL of an uploaded image on the API's public base URL."""
        token = quote(self.issue(owner, image_uuid), safe=".")
        return f"{base_url.rstrip('/')}/v1/images/{image_uuid}.{extension}?token={token}"
