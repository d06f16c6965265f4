"""Publishes one result's deltas, coalesced by time and size, and then its final item."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from redis.exceptions import RedisError

from core.keys import TaskRef
from core.store import FinishOutcome, TaskStore

log = structlog.get_logger("taskwire.publisher")


class ResultPublisher:
    """The event writer of one result of one task.

    With `eager_first` (a client is streaming), the first delta goes out at once: time to
    first token is what users feel. Later ones (and all, for sync and async tasks, whose
    deltas only serve clients re-attaching later) are buffered and appended when `max_chars`
    have gathered or `interval_s` has passed since the oldest unsent one, so a long answer
    costs a few dozen Redis calls, not one per token.
    Appends run beside the upstream read (one at a time, in order), so Redis round trips
    never hold up the stream. Each delta event carries the job attempt (`a`) and a sequence
    number (`s`); the final event is written with whatever is still buffered, in one step.
    """

    def __init__(
        self,
        store: TaskStore,
        ref: TaskRef,
        index: int,
        attempt: int,
        *,
        eager_first: bool = True,
        interval_s: float = 0.05,
        max_chars: int = 2048,
    ):
        self._store = store
        self._ref = ref
        self._index = index
        self._attempt = attempt
        self._interval_s = interval_s
        self._max_chars = max_chars
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._chars = 0
        self._oldest: float | None = None
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._eager_first = eager_first
        self.published = False
        self.appends = 0

    def add(self, text: str = "", reasoning: str = "") -> None:
        """Buffer a delta; an append is started when one is due."""
        if not text and not reasoning:
            return
        if reasoning and self._text:
            self._kick()  # reasoning after text: keep the order across events
        if reasoning:
            self._reasoning.append(reasoning)
        if text:
            self._text.append(text)
        self._chars += len(text) + len(reasoning)
        if self._oldest is None:
            self._oldest = time.monotonic()
        if self._due():
            self._kick()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._kick)

    def _due(self) -> bool:
        if not self._text and not self._reasoning:
            return False
        if (self._eager_first and not self.published) or self._chars >= self._max_chars:
            return True
        return self._oldest is not None and time.monotonic() - self._oldest >= self._interval_s

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while True:
            event = self._take()
            if event is None:
                return
            try:
                await self._store.append_events(self._ref, [event])
            except (RedisError, OSError) as exc:
                self._restore(event)
                log.warning("publisher.append_failed", error=type(exc).__name__)
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(
                        self._interval_s, self._kick
                    )
                return
            self.appends += 1
            if not self._due():
                if (self._text or self._reasoning) and self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(
                        self._interval_s, self._kick
                    )
                return

    def _take(self) -> dict[str, Any] | None:
        if not self._text and not self._reasoning:
            return None
        self._seq += 1
        self.published = True
        event: dict[str, Any] = {"t": "d", "i": self._index, "a": self._attempt, "s": self._seq}
        if self._reasoning:
            event["rc"] = "".join(self._reasoning)
        if self._text:
            event["text"] = "".join(self._text)
        self._text, self._reasoning, self._chars, self._oldest = [], [], 0, None
        return event

    def _restore(self, event: dict[str, Any]) -> None:
        self._seq -= 1
        text, reasoning = event.get("text", ""), event.get("rc", "")
        if text:
            self._text.insert(0, text)
        if reasoning:
            self._reasoning.insert(0, reasoning)
        self._chars += len(text) + len(reasoning)
        self._oldest = self._oldest or time.monotonic()

    async def finish(self, item: dict[str, Any]) -> FinishOutcome:
        """Append what is buffered and the final result in one step (never overwriting a
        final result another run already wrote)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inflight is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._inflight
        pending = self._take()
        final = {"t": "f", "i": self._index, "a": self._attempt, "r": item}
        try:
            outcome = await self._store.finish_result(
                self._ref, self._index, item, final, [pending] if pending else []
            )
        except BaseException:
            if pending is not None:
                self._restore(pending)
            raise
        self.appends += 1
        return outcome

    def close(self) -> None:
        """Stop background appends (the job is being abandoned)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inflight is not None:
            self._inflight.cancel()
