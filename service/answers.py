"""Answerers: what a submitted (or looked-up) task's response says, one per delivery method,
each working from the task's stored events and record through the typed contract.

- sync: wait for the final events (`SyncAnswer`: the items, or a 202's items with links);
- stream: a `StreamPlan` the response renders as server-sent events;
- async: the acknowledgement with the task's links;
- getResponse (and a re-sent task): the record's state, one item per result.
taskCancel answers come from service/cancel.py (`TaskCancels.cancel`).

An answerer never validates or submits (service/intake.py does), so another front door (an
OpenAI-shaped facade) reuses intake and adds answerers of its own over the same events.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from core.contract import ProcessingItem, ResultItem
from core.deliveries import DeliveryState
from core.errors import TaskNotFound
from core.events import TaskEvents
from core.keys import TaskRef
from core.store import TaskRecord, TaskStore
from core.tokens import StreamTokens
from service.cancel import Disconnects
from service.delivery import collect_results, result_items
from service.intake import Submitted
from service.metrics import timed_sync_wait
from service.streaming import ChunkRenderer


@dataclass(eq=False)
class StreamPlan:
    """What the response needs to stream one task: its events, their rendering, and the
    subscription to release when the stream ends."""

    events: TaskEvents
    renderer: ChunkRenderer
    cleanup: contextlib.AsyncExitStack | None = None
    # The task, when it opted in to being cancelled if the stream closes before its end.
    cancel_on_disconnect: TaskRef | None = None


@dataclass(eq=False)
class SyncAnswer:
    items: list[dict[str, Any]]
    pending: bool  # not every result was final in time: a 202


class Answers:
    """The answerers of one API key owner's requests."""

    def __init__(self, *, owner: str, store: TaskStore, tokens: StreamTokens, base_url: str):
        self.owner = owner
        self.store = store
        self.tokens = tokens
        self.base_url = base_url

    def links(self, uuid: str) -> dict[str, Any]:
        """The task's links: `stream`, its event stream for a browser (absolute, signed). Kept
        under `links`, not as a top-level `...URL` field, which Runware's SDKs read as a
        finished result."""
        return {"links": {"stream": self.tokens.stream_url(self.base_url, self.owner, uuid)}}

    # --- per delivery method

    def stream(self, submitted: Submitted) -> StreamPlan:
        """A stream task's plan (it must have been accepted with its subscription)."""
        task, sub = submitted.task, submitted.accepted.sub
        assert sub is not None
        # A new task's subscription was live before it was enqueued: no replay needed.
        return StreamPlan(
            TaskEvents(sub, self.store, submitted.ref, replay=not submitted.created),
            ChunkRenderer(task.taskUUID, task.numberResults),
            cancel_on_disconnect=submitted.ref if task.cancelOnDisconnect else None,
        )

    @timed_sync_wait
    async def sync(
        self,
        submitted: Submitted,
        deadline: float,
        disconnects: Disconnects | None = None,
        on_disconnect: Callable[[TaskRef], Awaitable[None]] | None = None,
    ) -> SyncAnswer:
        """Wait (until the loop time `deadline`) for every result; a task that opted in to
        cancelOnDisconnect is cancelled if `disconnects` hears its client leave first."""
        task, sub = submitted.task, submitted.accepted.sub
        assert sub is not None
        uuid, n = task.taskUUID, task.numberResults
        waiting = collect_results(
            sub, self.store, submitted.ref, n, deadline, read_first=not submitted.created
        )
        if task.cancelOnDisconnect:
            results = await self._unless_disconnected(
                submitted.ref, waiting, disconnects, on_disconnect
            )
        else:
            results = await waiting
        items = result_items(uuid, n, results)
        if len(results) < n:  # a 202: the client polls, or follows the stream link
            links = self.links(uuid)
            return SyncAnswer([{**item, **links} for item in items], pending=True)
        return SyncAnswer(items, pending=False)

    async def acknowledge(self, submitted: Submitted) -> list[dict[str, Any]]:
        """An async task: `processing` with its links when new, else its current state."""
        uuid = submitted.task.taskUUID
        if submitted.created:
            return [{**ProcessingItem(uuid).to_wire(), **self.links(uuid)}]
        record = await self.store.get(submitted.ref)
        return self.state_items(record) if record is not None else []

    # --- a task's state (getResponse)

    def state_items(self, record: TaskRecord) -> list[dict[str, Any]]:
        """A task's current state, one item per result: as getResponse shows it, with the
        task's links and, for a task with a webhook, each result's delivery state."""
        uuid = record.ref.uuid
        links = self.links(uuid)
        items = []
        for item in result_items(uuid, record.number_results, record.results):
            shown = {**item, **links}
            delivery = record.deliveries.get(item["resultIndex"])
            if delivery is not None:
                shown["webhook"] = DeliveryState(**delivery).public()
            items.append(shown)
        return items

    async def lookups(self, refs: list[TaskRef]) -> list[list[dict[str, Any]] | TaskNotFound]:
        """getResponse for several tasks (one round trip): each one's items, or TaskNotFound."""
        records = await self.store.get_many(refs)
        return [
            self.state_items(record)
            if record is not None
            else TaskNotFound(
                f"No task {ref.uuid} for this API key: it is unknown, expired, or "
                "belongs to another key.",
                parameter="taskUUID",
            )
            for ref, record in zip(refs, records, strict=True)
        ]

    @staticmethod
    async def _unless_disconnected(
        ref: TaskRef,
        waiting: Coroutine[Any, Any, dict[int, ResultItem]],
        disconnects: Disconnects | None,
        on_disconnect: Callable[[TaskRef], Awaitable[None]] | None,
    ) -> dict[int, ResultItem]:
        """The sync wait of a task that opted in to cancelOnDisconnect, cut short (and the
        task cancelled) if the client's connection closes first."""
        if disconnects is None:
            return await waiting
        results = await disconnects.unless_gone(waiting)
        if results is None:
            if on_disconnect is not None:
                await on_disconnect(ref)
            return {}
        return results
