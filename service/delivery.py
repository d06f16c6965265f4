"""Waiting for results: sync requests learn of finished results from the task's event stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from core.contract import Final, ProcessingItem, ResultItem
from core.errors import ServiceUnavailable
from core.events import RESYNC, Event, EventHub, Subscription
from core.keys import TaskRef
from core.store import TaskStore

SUBSCRIBE_TIMEOUT_S = 5.0


class SyncWaits:
    """The result waits running in this process, so that a shutdown ends them before its
    grace runs out (service/__main__.py): a wait uvicorn cancels at the end of the grace
    becomes a bare 500, while one ended in time answers as any wait that ran out of time
    does (a sync task's 202, whose client polls getResponse on another process)."""

    def __init__(self) -> None:
        self._running: set[asyncio.Timeout] = set()
        self._cap: float | None = None

    @property
    def ending(self) -> bool:
        """Whether a shutdown has brought the waits' end forward."""
        return self._cap is not None

    def end_by(self, when: float) -> None:
        """End every wait by the loop time `when`, and those that start later too."""
        self._cap = when if self._cap is None else min(self._cap, when)
        for timeout in self._running:
            ends = timeout.when()
            if ends is None or ends > when:
                timeout.reschedule(when)

    @contextlib.asynccontextmanager
    async def until(self, deadline: float) -> AsyncIterator[None]:
        """`asyncio.timeout_at(deadline)`, brought forward by a shutdown."""
        if self._cap is not None:
            deadline = min(deadline, self._cap)
        async with asyncio.timeout_at(deadline) as timeout:
            self._running.add(timeout)
            try:
                yield
            finally:
                self._running.discard(timeout)


sync_waits = SyncWaits()  # one server per process (`python -m service`)


@contextlib.asynccontextmanager
async def watching(hub: EventHub, store: TaskStore, ref: TaskRef) -> AsyncIterator[Subscription]:
    """A subscription to a task's events. SUBSCRIBE is sent, not yet confirmed."""
    async with hub.subscribe(store.keys.events(ref)) as sub:
        yield sub


async def confirmed(sub: Subscription) -> None:
    """Wait until Redis confirms the subscription: from then on, nothing published is missed."""
    if sub.live:
        return
    try:
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            await sub.ready()
    except TimeoutError:
        raise ServiceUnavailable("Task events are unavailable (Redis unreachable).") from None


async def collect_results(
    sub: Subscription,
    store: TaskStore,
    ref: TaskRef,
    number_results: int,
    deadline: float,
    *,
    read_first: bool,
) -> dict[int, ResultItem]:
    """Final results of a task as they land, until all are in or the loop time `deadline`.

    `sub` must be confirmed. With `read_first`, results stored before the subscription was
    live are read once (a task enqueued only after confirmation needs no read). No Redis
    command is sent while waiting, except a re-read of the record when the hub reconnected
    or this reader fell behind.
    """
    await confirmed(sub)
    if read_first:
        sub.request_resync()
    results: dict[int, ResultItem] = {}
    with contextlib.suppress(TimeoutError):
        async with sync_waits.until(deadline):
            while len(results) < number_results:
                event = await sub.get()
                if event is RESYNC:
                    record = await store.get(ref)
                    if record is not None:
                        results.update(record.results)
                    continue
                final = event.body if isinstance(event, Event) else None
                if isinstance(final, Final):
                    results[final.index] = final.item
    return results


def result_items(
    task_uuid: str, number_results: int, results: dict[int, ResultItem]
) -> list[dict[str, Any]]:
    """One item per result in index order, as answers show it: the final item, or
    `processing`."""
    return [
        (results[i] if i in results else ProcessingItem(task_uuid, i)).to_wire()
        for i in range(number_results)
    ]
