"""The HTTP side of the CLI: POST /v1 with retries that honour Retry-After, GET routes, and
a stream task's server-sent events."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

# A task refused with one of these codes is sent again after Retry-After: it was refused
# for now (a per-key limit, a full queue, load shedding), not for what it is.
RETRYABLE_CODES = frozenset(
    {"rateLimitExceeded", "tokenLimitExceeded", "queueLimitExceeded", "queueFull", "serverBusy"}
)


class Fatal(Exception):
    """Nothing more can be done this run (bad key, the service unreachable for too long)."""


@dataclass(slots=True)
class Reply:
    status: int
    body: dict[str, Any]
    retry_after: float | None

    @property
    def data(self) -> list[dict[str, Any]]:
        data = self.body.get("data")
        return data if isinstance(data, list) else []

    @property
    def errors(self) -> list[dict[str, Any]]:
        errors = self.body.get("errors")
        return errors if isinstance(errors, list) else []


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class Backoff:
    """Exponential backoff with full jitter, capped; a Retry-After overrides one wait."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 30.0):
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0

    def next_wait(self, retry_after_s: float | None = None) -> float:
        self.attempt += 1
        if retry_after_s is not None:
            return retry_after_s + random.uniform(0, 0.25 * max(retry_after_s, 0.2))
        return random.uniform(0, min(self.cap_s, self.base_s * 2 ** (self.attempt - 1)))

    def reset(self) -> None:
        self.attempt = 0


class Client:
    """One API key on one base URL. Connection failures and 5xx without a protocol answer
    are retried for up to `give_up_s` (tasks are idempotent by taskUUID, so sending a
    request again is always safe); whole-request 429/503 answers after their Retry-After."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 60.0,
        give_up_s: float = 300.0,
        max_connections: int = 16,
    ):
        self.api_key = api_key
        self.give_up_s = give_up_s
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def post(self, tasks: list[dict[str, Any]], retry_limits: bool = True) -> Reply:
        """POST /v1 with these tasks. A whole-request refusal for a limit (429, 503 with
        Retry-After) is waited out and sent again when `retry_limits`; per-task errors are
        the caller's to read."""
        payload = json.dumps(tasks, ensure_ascii=False, separators=(",", ":")).encode()
        return await self._send("POST", "/v1", content=payload, retry_limits=retry_limits)

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Reply:
        return await self._send("GET", path, params=params, retry_limits=True)

    async def _send(self, method: str, path: str, *, retry_limits: bool, **kwargs: Any) -> Reply:
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        while True:
            try:
                response = await self.http.request(
                    method, path, headers={"Content-Type": "application/json"}, **kwargs
                )
            except httpx.TransportError as exc:
                failing_since = failing_since or loop.time()
                if loop.time() - failing_since > self.give_up_s:
                    raise Fatal(f"cannot reach {self.http.base_url}: {exc!r}") from None
                await asyncio.sleep(backoff.next_wait())
                continue
            reply = Reply(response.status_code, _json(response), retry_after(response))
            if response.status_code == 401:
                message = reply.errors[0].get("message") if reply.errors else response.text
                raise Fatal(f"the API key was refused: {message}")
            if response.status_code >= 500 and not _limit_refusal(reply):
                failing_since = failing_since or loop.time()
                if loop.time() - failing_since > self.give_up_s:
                    raise Fatal(f"{method} {path}: HTTP {response.status_code}: {response.text}")
                await asyncio.sleep(backoff.next_wait(reply.retry_after))
                continue
            if retry_limits and response.status_code in (429, 503) and not reply.data:
                await asyncio.sleep(backoff.next_wait(reply.retry_after))
                continue
            return reply

    async def stream(self, task: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The JSON events of a stream task, as they arrive (ends at `data: [DONE]`)."""
        payload = json.dumps([task], separators=(",", ":")).encode()
        async with self.http.stream(
            "POST", "/v1", content=payload, headers={"Content-Type": "application/json"}
        ) as response:
            if response.status_code != 200 or not response.headers.get(
                "content-type", ""
            ).startswith("text/event-stream"):
                await response.aread()
                yield _json(response) or {"errors": [{"message": response.text}]}
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                yield json.loads(data)


def _limit_refusal(reply: Reply) -> bool:
    return any(error.get("code") in RETRYABLE_CODES for error in reply.errors)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
