"""What every upstream adapter takes and yields, and the HTTP failure translation they share."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from core.catalog import Route
from core.errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamStreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from core.protocol import TextInferenceTask
from worker.providers.sse import aiter_sse

_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One attempt at one result on one route."""

    route: Route
    api_key: str
    task: TextInferenceTask
    seed: int
    images: tuple[str, ...] = ()  # data URIs or http(s) URLs, for the last user message


# --- what adapters yield, in the order the upstream produced it


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call; `arguments` fragments concatenate to the JSON input."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Finished:
    reason: str | None


@dataclass(frozen=True, slots=True)
class UsageReport:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0


UpstreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | Finished | UsageReport


class Adapter(Protocol):
    """An upstream API. `stream` yields events for one call; failures are UpstreamError."""

    @property
    def name(self) -> str: ...

    def stream(
        self, client: httpx.AsyncClient, call: UpstreamCall
    ) -> AsyncIterator[UpstreamEvent]: ...


def system_text(task: TextInferenceTask) -> str | None:
    """settings.systemPrompt and any system messages, folded into one system prompt."""
    parts = [task.settings.systemPrompt] if task.settings.systemPrompt else []
    parts += [m.content for m in task.messages if m.role == "system" and m.content]
    return "\n\n".join(parts) if parts else None


def last_user_index(task: TextInferenceTask) -> int:
    """Where images go: the last user message (-1 if there is none)."""
    for index in range(len(task.messages) - 1, -1, -1):
        if task.messages[index].role == "user":
            return index
    return -1


# --- shared HTTP failure translation (messages never quote upstream bodies or secrets)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for_status(response: httpx.Response) -> UpstreamError:
    """The error for a non-2xx upstream answer, judged by status and headers only."""
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 429:
        return UpstreamRateLimited(
            "The model provider is rate limiting requests; try again later.",
            http_status=status,
            retry_after=retry_after,
        )
    if status in (408, 504):
        return UpstreamTimeout(
            "The model provider timed out.", http_status=status, retry_after=retry_after
        )
    if status >= 500:
        return UpstreamServerError(
            f"The model provider failed (HTTP {status}).",
            http_status=status,
            retry_after=retry_after,
        )
    if status in (401, 403):
        return UpstreamRejected(
            "The model provider refused taskwire's credentials; the operator has been told.",
            http_status=status,
        )
    return UpstreamRejected(
        f"The model provider rejected the request (HTTP {status}).", http_status=status
    )


def error_for_transport(exc: httpx.HTTPError, *, streaming: bool) -> UpstreamError:
    """The error for a failed connection, a timeout or a broken stream."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return UpstreamTimeout("The model provider did not answer in time.")
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return UpstreamUnreachable("No model provider server could be reached.")
    if streaming:
        return UpstreamStreamBroken("The model provider's stream broke off.")
    return UpstreamUnreachable("The connection to the model provider failed.")


def request_timeout(route: Route, connect_s: float) -> httpx.Timeout:
    """Connect quickly; then the route's timeout bounds every wait for the next bytes."""
    return httpx.Timeout(connect=connect_s, read=route.timeout_s, write=30.0, pool=30.0)


def parse_model(model: type[_M], data: str | bytes, what: str) -> _M:
    """An upstream payload as a pydantic model; UpstreamStreamBroken if it is not one."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise UpstreamStreamBroken(f"The model provider sent an unreadable {what}.") from exc


# After `[DONE]` an upstream ends its response (the chunked body's last bytes follow at once);
# how long to wait for that end before giving the connection up.
DRAIN_AFTER_DONE_S = 1.0


async def _read_to_end(events: AsyncIterator[Any]) -> None:
    """Read what follows `[DONE]` until the response ends, so its connection goes back to
    the pool: a response closed with bytes unread takes its connection with it, and every
    upstream call then paid a new TCP connection. An upstream that keeps talking after
    `[DONE]` is cut off after DRAIN_AFTER_DONE_S (that connection is then closed)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_AFTER_DONE_S):
            async for _ in events:
                pass


@dataclass(frozen=True, slots=True)
class SSEAdapter:
    """An upstream API that answers a bearer-authenticated POST with server-sent events:
    where to POST (`path`, after the route's base URL), what (`build`), and what one event's
    data (`on_event`) or a whole answer from an upstream that did not stream (`on_whole`)
    means. The stream must reach a Finished event; `[DONE]` ends it. Upstream error bodies
    are never read: the status decides the error."""

    name: str
    path: str
    build: Callable[[UpstreamCall], Any]
    on_event: Callable[[str], list[UpstreamEvent]]
    on_whole: Callable[[bytes], list[UpstreamEvent]]
    connect_timeout_s: float = 5.0

    async def stream(
        self, client: httpx.AsyncClient, call: UpstreamCall
    ) -> AsyncIterator[UpstreamEvent]:
        headers = {
            "Authorization": f"Bearer {call.api_key}",
            "Accept": "text/event-stream",
            **call.route.headers,
        }
        try:
            async with client.stream(
                "POST",
                call.route.base_url + self.path,
                json=self.build(call),
                headers=headers,
                timeout=request_timeout(call.route, self.connect_timeout_s),
            ) as response:
                if response.status_code >= 400:
                    await response.aclose()
                    raise error_for_status(response)
                content_type = response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    for event in self.on_whole(await response.aread()):
                        yield event
                    return
                finished = False
                events = aiter_sse(response)
                async for sse in events:
                    if sse.data == "[DONE]":
                        await _read_to_end(events)
                        break
                    for event in self.on_event(sse.data):
                        finished = finished or isinstance(event, Finished)
                        yield event
                if not finished:
                    raise UpstreamStreamBroken("The model provider's stream ended early.")
        except httpx.HTTPError as exc:
            raise error_for_transport(exc, streaming=True) from exc
