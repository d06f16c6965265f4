"""WebSocket sessions in Redis: a socket's owner and outstanding tasks, kept for the resume
window, so a client that reconnects (to any API process) gets what it missed, once.

One hash per session (`Keys.ws_session`): `owner` → the API key's owner id, and one field
per outstanding task, named by its canonical taskUUID: "<taskUUID as sent> <numberResults>
<bitmask of the results already sent>". A task leaves the hash once every result was sent.
Every write sets the key's TTL to the window, so a session nobody touches (its socket gone)
is forgotten a window after its last write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

from core.keys import Keys

OWNER_FIELD = b"owner"


@dataclass(slots=True)
class Outstanding:
    """A task of the session and which of its results the client was sent."""

    spelled: str  # the taskUUID as the client sent it
    number_results: int
    sent: int = 0  # bit i: result i was written to the socket

    @property
    def complete(self) -> bool:
        return self.sent == (1 << self.number_results) - 1

    def was_sent(self, index: int) -> bool:
        return bool(self.sent >> index & 1)

    def encode(self) -> str:
        return f"{self.spelled} {self.number_results} {self.sent}"

    @classmethod
    def decode(cls, raw: bytes) -> Outstanding | None:
        try:
            spelled, n, sent = raw.decode().split(" ")
            return cls(spelled, int(n), int(sent))
        except ValueError:
            return None


class SessionStore:
    """Reads and writes WebSocket sessions (one round trip each)."""

    def __init__(self, redis: Redis, keys: Keys, window_s: int):
        self.redis = redis
        self.keys = keys
        self.window_s = window_s

    async def load(self, session: str) -> tuple[str | None, dict[str, Outstanding]]:
        """The session's owner (None: unknown or expired) and outstanding tasks."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(  # type: ignore[misc]
            self.keys.ws_session(session)
        )
        owner = raw.pop(OWNER_FIELD, None)
        tasks: dict[str, Outstanding] = {}
        for name, value in raw.items():
            found = Outstanding.decode(value)
            if found is not None:
                tasks[name.decode()] = found
        return (owner.decode() if owner is not None else None), tasks

    async def write(
        self, session: str, owner: str, changes: Mapping[str, Outstanding | None]
    ) -> None:
        """Record tasks (None: forget one, all its results sent) and restart the window."""
        key = self.keys.ws_session(session)
        gone = [name for name, task in changes.items() if task is None]
        kept = {name: task.encode() for name, task in changes.items() if task is not None}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={OWNER_FIELD: owner, **kept})
            if gone:
                pipe.hdel(key, *gone)
            pipe.expire(key, self.window_s)
            await pipe.execute()

    async def touch(self, session: str) -> None:
        """Restart the window (the socket closed, or is still in use)."""
        await self.redis.expire(self.keys.ws_session(session), self.window_s)
