"""Cancelling tasks from the API: a client's taskCancel (or DELETE), and a disconnect.

A cancel answers with what happened to each result, so the answer is the same however often
it is sent: `cancelled` (the result is, or is now, a taskCancelled error), `alreadyFinal`
(it had finished, or failed or expired, before the cancel), or `cancelling` (it was running
and its worker has not confirmed the stop within a moment; it will not produce an answer).
The answer waits up to `cancel_wait_s` for running results to stop, on the task's events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog
from starlette.types import Receive

from core.cancel import Canceller, Fate
from core.contract import ErrorItem, Final, ResultItem
from core.deliveries import DeliveryStore
from core.errors import TASK_CANCELLED, TaskNotFound
from core.events import RESYNC, Event, EventHub, Subscription
from core.keys import TaskRef
from core.store import FollowUpJob, TaskRecord, TaskStore
from service.delivery import confirmed, watching

log = structlog.get_logger("taskwire.cancel")

DISCONNECT_MESSAGE = "The client disconnected before this result finished (cancelOnDisconnect)."
CANCEL_MESSAGE = "The task was cancelled before this result finished."


class TaskCancels:
    """Cancels tasks of one API process (the cancel script, deliveries for webhooks)."""

    def __init__(self, store: TaskStore, hub: EventHub, deliveries: DeliveryStore):
        self.store = store
        self.hub = hub
        self.deliveries = deliveries
        self.canceller = Canceller(store)

    def _follow_up(self, record: TaskRecord) -> Callable[[TaskRef, int], FollowUpJob] | None:
        """What a result recorded by the cancel enqueues: its webhook delivery, if any."""
        return self.deliveries.first_job if record.request.get("webhookURL") else None

    async def cancel(self, ref: TaskRef, sent_uuid: str, wait_s: float) -> list[dict[str, Any]]:
        """Cancel the task's unfinished results and say what happened to each (TaskNotFound
        for an unknown task or another key's)."""
        record = await self.store.get(ref)
        if record is None:
            raise TaskNotFound(
                f"No task {sent_uuid} for this API key: it is unknown, expired, or belongs to "
                "another key.",
                parameter="taskUUID",
            )
        async with watching(self.hub, self.store, ref) as sub:
            await confirmed(sub)
            fates = await self.canceller.cancel(
                record, TASK_CANCELLED, CANCEL_MESSAGE, self._follow_up(record)
            )
            running = {index for index, fate in fates.items() if fate == "running"}
            if running:
                await _until_final(sub, self.store, ref, running, wait_s)
        log.info("task.cancel", task_uuid=ref.uuid, fates=list(fates.values()))
        final = await self.store.get(ref)
        results = final.results if final is not None else {}
        return [
            {
                "taskType": "taskCancel",
                "taskUUID": sent_uuid,
                "resultIndex": index,
                "status": _status(results.get(index), fates.get(index, "final")),
            }
            for index in range(record.number_results)
        ]

    async def on_disconnect(self, ref: TaskRef) -> None:
        """Cancel a task whose client went away (it opted in with cancelOnDisconnect)."""
        try:
            record = await self.store.get(ref)
            if record is None:
                return
            fates = await self.canceller.cancel(
                record, TASK_CANCELLED, DISCONNECT_MESSAGE, self._follow_up(record)
            )
        except Exception as exc:  # a background task: logged, never raised into nothing
            log.warning("task.disconnect_cancel_failed", error=type(exc).__name__)
            return
        log.info("task.cancelled_on_disconnect", task_uuid=ref.uuid, fates=list(fates.values()))


def _status(result: ResultItem | None, fate: Fate) -> str:
    if result is None:
        return "cancelling" if fate == "running" else "cancelled"
    if isinstance(result, ErrorItem) and result.code == TASK_CANCELLED:
        return "cancelled"
    return "alreadyFinal"


async def _until_final(
    sub: Subscription, store: TaskStore, ref: TaskRef, waiting: set[int], wait_s: float
) -> None:
    """Wait (at most `wait_s`) until every result in `waiting` has its final event."""
    left = set(waiting)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            while left:
                event = await sub.get()
                if event is RESYNC:
                    record = await store.get(ref)
                    if record is not None:
                        left -= set(record.results)
                    continue
                body = event.body if isinstance(event, Event) else None
                if isinstance(body, Final):
                    left.discard(body.index)


T = TypeVar("T")


class Disconnects:
    """Hears the client of one request leave (ASGI `http.disconnect`, which `receive` gives
    once the body has been read and the connection closes), from the first wait on."""

    def __init__(self, receive: Receive):
        self._receive = receive
        self._gone = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    async def unless_gone(self, waiting: Coroutine[Any, Any, T]) -> T | None:
        """What `waiting` returns, or None if the client left first (it is cancelled)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())
        work = asyncio.ensure_future(waiting)
        gone = asyncio.ensure_future(self._gone.wait())
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                await asyncio.wait({work})
        return None if work.cancelled() else work.result()

    async def _listen(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._gone.set()
                return

    def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()


_background: set[asyncio.Task[None]] = set()


def in_background(work: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on its own task (outside the cancelled scope of a closing response),
    keeping a reference until it ends."""
    task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)
