"""Publishes one result's deltas, coalesced by time and size, and then its final item."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from redis.exceptions import RedisError

from core.contract import Delta, Final, ResultItem
from core.keys import TaskRef
from core.store import FinishOutcome, FollowUpJob, TaskStore

log = structlog.get_logger("taskwire.publisher")


class ResumeMismatch(Exception):
    """A re-run of a result did not reproduce the text an earlier run already published."""


class ResultPublisher:
    """The event writer of one result of one task.

    With `eager_first` (a client is streaming), the first delta goes out at once: time to
    first token is what users feel. Later deltas (and all of them, for sync and async tasks,
    whose deltas only serve clients that re-attach) are buffered and appended when
    `max_chars` have gathered or the wait since the oldest unsent one reaches the interval.
    The interval starts at `interval_s` and grows by half after each append made on time, up
    to `max_interval_s`: the first second of an answer flows in small steps, and a long,
    slow answer still costs a few dozen Redis calls, not one per token. An event holds text or
    reasoning, never both (a switch seals the buffer). Appends run beside the upstream read,
    one call at a time and in order, so Redis round trips never hold up the stream. Each
    delta event carries the job attempt (`a`) and a sequence number (`s`); the final event is
    written with whatever is still unsent, in one step.
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
        max_interval_s: float = 0.5,
        max_chars: int = 1024,
        published_text: str = "",
        published_reasoning: str = "",
        job_class: str = "i",
        token: str = "",
    ):
        self._store = store
        self._job_class = job_class
        self._token = token  # the claim's: the final write is refused if its lease was lost
        self.lease_lost = False  # an append was refused: another claim holds the job
        self._ref = ref
        self._index = index
        self._attempt = attempt
        self._eager_first = eager_first
        self._interval_s = interval_s
        self._max_interval_s = max(max_interval_s, interval_s)
        self._max_chars = max_chars
        self._parts: list[str] = []
        self._kind = ""  # "text" or "rc" while parts are buffered
        self._chars = 0
        self._oldest = 0.0
        self._seq = 0
        self._outbox: list[Delta] = []
        self._timer: asyncio.TimerHandle | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self.published = False
        self.appends = 0
        # What an earlier run of this result already published: a re-run streams again from
        # the upstream, checks it reproduces this, and publishes only what comes after.
        self._prior = (published_text, published_reasoning)
        self._expect_text, self._expect_reasoning = self._prior

    # --- re-runs

    def restart(self) -> None:
        """A new upstream attempt (before anything new was published) starts from scratch."""
        self._expect_text, self._expect_reasoning = self._prior

    def check_caught_up(self) -> None:
        """At the end of a re-run: it must have reproduced everything published before."""
        if self._expect_text or self._expect_reasoning:
            raise ResumeMismatch

    @staticmethod
    def _skip(expected: str, piece: str) -> tuple[str, str]:
        """(what is still expected, what of `piece` is new) after `piece` arrives."""
        if not expected or not piece:
            return expected, piece
        if expected.startswith(piece):
            return expected[len(piece) :], ""
        if piece.startswith(expected):
            return "", piece[len(expected) :]
        raise ResumeMismatch

    # --- deltas

    def add(self, text: str = "", reasoning: str = "") -> None:
        """Buffer a delta; an append is started when one is due."""
        self._expect_reasoning, reasoning = self._skip(self._expect_reasoning, reasoning)
        self._expect_text, text = self._skip(self._expect_text, text)
        if reasoning:
            self._buffer("rc", reasoning)
        if text:
            self._buffer("text", text)

    def _buffer(self, kind: str, piece: str) -> None:
        if self._parts and kind != self._kind:
            self._seal()
        if not self._parts:
            self._kind, self._oldest = kind, time.monotonic()
        self._parts.append(piece)
        self._chars += len(piece)
        if (self._eager_first and not self.published) or self._chars >= self._max_chars:
            self._flush()
        elif time.monotonic() - self._oldest >= self._interval_s:
            self._flush_on_time()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self._interval_s, self._flush_on_time
            )

    def _flush_on_time(self) -> None:
        self._flush()
        self._interval_s = min(self._interval_s * 1.5, self._max_interval_s)

    def _seal(self) -> None:
        """Turn the buffered pieces into an event waiting to be sent."""
        if not self._parts:
            return
        self._seq += 1
        self.published = True
        piece = "".join(self._parts)
        if self._kind == "rc":
            delta = Delta(self._index, self._attempt, self._seq, reasoning=piece)
        else:
            delta = Delta(self._index, self._attempt, self._seq, text=piece)
        self._outbox.append(delta)
        self._parts, self._chars = [], 0

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._seal()
        if self.lease_lost:
            self._outbox.clear()
        elif self._outbox and (self._drain_task is None or self._drain_task.done()):
            self._drain_task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                ids = await self._store.append_events(self._ref, batch, self._index, self._token)
            except (RedisError, OSError) as exc:
                self._outbox[:0] = batch  # sent again by the next flush, or by finish()
                log.warning("publisher.append_failed", error=type(exc).__name__)
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(
                        self._interval_s, self._flush
                    )
                return
            if ids is None:
                # another claim holds the job now: this run's deltas are stale, and so is
                # its final write (refused too); stop sending
                self.lease_lost = True
                self._outbox.clear()
                log.warning("publisher.lease_lost", task_uuid=self._ref.uuid, index=self._index)
                return
            self.appends += 1

    # --- the end

    async def finish(
        self, item: ResultItem, then: FollowUpJob | None = None, usage_tokens: int = 0
    ) -> FinishOutcome:
        """Append whatever is unsent and the final result in one step (never overwriting a
        final result another run already wrote), enqueuing `then` with it and counting
        `usage_tokens` against the key's tokens per minute if it is recorded."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._drain_task is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._drain_task
        self._seal()
        pending, self._outbox = self._outbox, []
        final = Final(self._index, self._attempt, item)
        try:
            outcome = await self._store.finish_result(
                self._ref, final, pending, then, self._job_class, self._token, usage_tokens
            )
        except BaseException:
            self._outbox[:0] = pending
            raise
        self.appends += 1
        return outcome

    def close(self) -> None:
        """Stop background appends (the job is being abandoned)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._drain_task is not None:
            self._drain_task.cancel()
