"""Runs the tasks of one `POST /v1` request: each task to intake or to its answerer, and
what the response says about it.

The envelope's own rules live here (a stream task is alone in its request, an
authentication task only comes first, items spell a taskUUID as this request sent it);
validating and submitting is service/intake.py, and what each delivery method answers is
service/answers.py, so another front door can reuse either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive

from core.catalog import Catalog
from core.deliveries import DeliveryStore
from core.errors import InvalidRequest, ServiceUnavailable, TaskNotFound, TaskwireError
from core.events import EventHub
from core.keys import TaskRef
from core.outbound import OutboundPolicy
from core.protocol import (
    GetResponseTask,
    ImageUploadTask,
    PingTask,
    TaskCancelTask,
    TaskErrors,
    TextInferenceTask,
    WireModel,
    canonical_uuid,
    parse_task,
)
from core.settings import Settings
from core.store import TaskStore
from core.tokens import StreamTokens
from service.answers import Answers, StreamPlan
from service.cancel import Disconnects, TaskCancels, in_background
from service.images import Images
from service.intake import Accepted, Intake, Submitted, fingerprint, task_ref
from service.shedding import LoadShedder

__all__ = ["Batch", "Slot", "StreamPlan", "fingerprint", "task_ref"]


@dataclass(eq=False)
class Slot:
    """One task of the request and what the response says about it."""

    raw: Any
    task: WireModel | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    errors: list[TaskwireError] = field(default_factory=list)
    pending_sync: bool = False  # a sync task whose results were not all final in time
    stream: StreamPlan | None = None  # a stream task: the response is its event stream

    def scope(self) -> dict[str, Any]:
        raw = self.raw if isinstance(self.raw, dict) else {}
        return {
            "taskType": raw.get("taskType") if isinstance(raw.get("taskType"), str) else None,
            "taskUUID": raw.get("taskUUID") if isinstance(raw.get("taskUUID"), str) else None,
        }


def spelled_as_sent(slot: Slot) -> None:
    """Items answer with the taskUUID spelling this request used (a task stores the first
    request's spelling)."""
    sent = getattr(slot.task, "taskUUID", None)
    if not isinstance(sent, str):
        return
    key = canonical_uuid(sent)
    slot.items = [
        {**item, "taskUUID": sent}
        if isinstance(item.get("taskUUID"), str)
        and item["taskUUID"] != sent
        and canonical_uuid(item["taskUUID"]) == key
        else item
        for item in slot.items
    ]


class Batch:
    """The tasks of one request, for one API key owner."""

    def __init__(
        self,
        *,
        owner: str,
        settings: Settings,
        catalog: Catalog,
        store: TaskStore,
        hub: EventHub,
        tokens: StreamTokens,
        outbound: OutboundPolicy,
        images: Images,
        base_url: str,
        deliveries: DeliveryStore | None = None,
        receive: Receive | None = None,
        shedder: LoadShedder | None = None,
        answer_waiting: Callable[[Submitted], Awaitable[list[dict[str, Any]]]] | None = None,
    ):
        self.owner = owner
        # A front door that pushes results itself (the WebSocket, service/ws.py) answers
        # sync and async tasks with this instead of waiting here.
        self.answer_waiting = answer_waiting
        self.settings = settings
        self.store = store
        self.hub = hub
        self.images = images
        self.base_url = base_url
        self.intake = Intake(
            owner=owner,
            settings=settings,
            catalog=catalog,
            store=store,
            hub=hub,
            outbound=outbound,
            images=images,
            shedder=shedder,
        )
        self.answers = Answers(owner=owner, store=store, tokens=tokens, base_url=base_url)
        self.slots: list[Slot] = []
        # taskCancel and cancelOnDisconnect: the cancel machinery (built when first needed),
        # and the request's ASGI receive, on which a sync wait hears its client leave.
        self._deliveries = deliveries
        self._cancels: TaskCancels | None = None
        self._disconnects = Disconnects(receive) if receive is not None else None

    async def run(self, raw_tasks: list[Any]) -> list[Slot]:
        """Answer every task. A stream task's slot leaves with its subscription still open
        (`slot.stream.cleanup` releases it)."""
        async with contextlib.AsyncExitStack() as subscriptions:
            try:
                slots = await self._run(raw_tasks, subscriptions)
            finally:
                if self._disconnects is not None:
                    self._disconnects.close()
            streaming = next((slot.stream for slot in slots if slot.stream is not None), None)
            if streaming is not None:
                streaming.cleanup = subscriptions.pop_all()
                if streaming.cancel_on_disconnect is not None:
                    # runs first when the stream ends (last in, first out), synchronously:
                    # a disconnected stream's body is closing inside a cancelled scope
                    streaming.cleanup.callback(self._stream_ended, streaming)
            return slots

    @property
    def cancels(self) -> TaskCancels:
        if self._cancels is None:
            if self._deliveries is None:
                raise RuntimeError("Batch needs `deliveries` to cancel tasks")
            self._cancels = TaskCancels(self.store, self.hub, self._deliveries)
        return self._cancels

    def _stream_ended(self, plan: StreamPlan) -> None:
        """A stream that closed before `[DONE]` (its client left): cancel its task."""
        if plan.cancel_on_disconnect is not None and not plan.renderer.done:
            in_background(self.cancels.on_disconnect(plan.cancel_on_disconnect))

    async def _run(
        self, raw_tasks: list[Any], subscriptions: contextlib.AsyncExitStack
    ) -> list[Slot]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.sync_timeout_s
        inference: list[tuple[Slot, Accepted]] = []
        lookups: list[Slot] = []
        cancels: list[Slot] = []
        for raw in raw_tasks:
            slot = Slot(raw)
            self.slots.append(slot)
            try:
                slot.task = parse_task(raw)
            except TaskErrors as exc:
                slot.errors.extend(exc.errors)
                continue
            if isinstance(slot.task, PingTask):
                slot.items.append({"taskType": "ping", "pong": True})
            elif isinstance(slot.task, ImageUploadTask):
                try:
                    slot.items.append(
                        await self.images.upload(self.owner, slot.task, self.base_url)
                    )
                except InvalidRequest as exc:
                    slot.errors.append(exc)
            elif isinstance(slot.task, GetResponseTask):
                lookups.append(slot)
            elif isinstance(slot.task, TaskCancelTask):
                cancels.append(slot)
            elif isinstance(slot.task, TextInferenceTask):
                try:
                    accepted = await self._accept(
                        slot, slot.task, subscriptions, alone=len(raw_tasks) == 1
                    )
                    inference.append((slot, accepted))
                except (InvalidRequest, ServiceUnavailable) as exc:
                    slot.errors.append(exc)
            else:
                slot.errors.append(
                    InvalidRequest(
                        "An authentication task must be the first in the request.",
                        code="invalidTaskType",
                        parameter="taskType",
                    )
                )
        if cancels:
            await self._answer_cancels(cancels)
        if lookups:
            await self._answer_lookups(lookups)
        if inference:
            await self._submit(inference, deadline)
        for slot in self.slots:
            spelled_as_sent(slot)
        return self.slots

    # --- textInference

    async def _accept(
        self,
        slot: Slot,
        task: TextInferenceTask,
        subscriptions: contextlib.AsyncExitStack,
        *,
        alone: bool,
    ) -> Accepted:
        """A valid textInference task, ready to submit (InvalidRequest if it is not)."""
        if task.deliveryMethod == "stream" and not alone:
            raise InvalidRequest(
                'A task with deliveryMethod "stream" must be the only task in its request '
                "(its response is the event stream).",
                code="invalidDeliveryMethod",
                parameter="deliveryMethod",
            )
        return await self.intake.accept(task, subscriptions, slot.raw)

    async def _submit(self, work: list[tuple[Slot, Accepted]], deadline: float) -> None:
        outcomes = await self.intake.submit([accepted for _slot, accepted in work])
        waits = []
        for (slot, _accepted), outcome in zip(work, outcomes, strict=True):
            if isinstance(outcome, TaskwireError):
                slot.errors.append(outcome)
            else:
                waits.append(self._answer(slot, outcome, deadline))
        if len(waits) == 1:  # the usual case: no task (and loop turn) for a gather
            await waits[0]
        elif waits:
            await asyncio.gather(*waits)

    async def _answer(self, slot: Slot, submitted: Submitted, deadline: float) -> None:
        """The answerer of the task's delivery method."""
        method = submitted.task.deliveryMethod
        if self.answer_waiting is not None and method != "stream":
            slot.items.extend(await self.answer_waiting(submitted))
        elif method == "stream":
            slot.stream = self.answers.stream(submitted)
        elif method == "sync":
            answer = await self.answers.sync(
                submitted, deadline, self._disconnects, self._cancel_on_disconnect
            )
            slot.pending_sync = answer.pending
            slot.items.extend(answer.items)
        else:
            slot.items.extend(await self.answers.acknowledge(submitted))

    async def _cancel_on_disconnect(self, ref: TaskRef) -> None:
        await self.cancels.on_disconnect(ref)

    # --- taskCancel

    async def _answer_cancels(self, slots: list[Slot]) -> None:
        async def one(slot: Slot) -> None:
            sent = slot.task.taskUUID  # type: ignore[union-attr]
            try:
                slot.items.extend(
                    await self.cancels.cancel(
                        task_ref(self.owner, sent), sent, self.settings.cancel_wait_s
                    )
                )
            except TaskNotFound as exc:
                slot.errors.append(exc)

        await asyncio.gather(*(one(slot) for slot in slots))

    # --- getResponse

    async def _answer_lookups(self, slots: list[Slot]) -> None:
        refs = [task_ref(self.owner, slot.task.taskUUID) for slot in slots]  # type: ignore[union-attr]
        for slot, answer in zip(slots, await self.answers.lookups(refs), strict=True):
            if isinstance(answer, TaskNotFound):
                slot.errors.append(answer)
            else:
                slot.items.extend(answer)
