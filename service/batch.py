"""Runs the tasks of one `POST /v1` request: validate each, submit new work, answer each."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive

from core.catalog import Catalog, ModelSpec
from core.contract import ProcessingItem, ResultItem
from core.deliveries import DeliveryState, DeliveryStore
from core.errors import (
    InvalidRequest,
    ServiceUnavailable,
    TaskConflict,
    TaskNotFound,
    TaskwireError,
)
from core.events import EventHub, Subscription, TaskEvents
from core.keys import TaskRef
from core.outbound import OutboundPolicy, OutboundRefused, OutboundUnresolvable, check_url
from core.prompt_size import tokens_over
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
from core.store import NewTask, TaskRecord, TaskStore
from core.tokens import StreamTokens
from service.cancel import Disconnects, TaskCancels, in_background
from service.delivery import collect_results, confirmed, result_items, watching
from service.images import Images
from service.limits import limit_error
from service.shedding import LoadShedder
from service.streaming import ChunkRenderer


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
class _Inference:
    slot: Slot
    task: TextInferenceTask
    ref: TaskRef
    new: NewTask
    sub: Subscription | None = None


def fingerprint(raw: dict[str, Any]) -> str:
    """The body of a task, spelling-independent in its taskUUID (two spellings of one UUID
    are one task)."""
    uuid = raw.get("taskUUID")
    if isinstance(uuid, str):
        raw = {**raw, "taskUUID": canonical_uuid(uuid)}
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def task_ref(owner: str, task_uuid: str) -> TaskRef:
    """A task's name in storage: the owner and the canonical (lower-case) taskUUID."""
    return TaskRef(owner, canonical_uuid(task_uuid))


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


def check_prefill(task: TextInferenceTask, model: ModelSpec) -> None:
    """A conversation ending with an assistant message needs a route that continues it."""
    if task.ends_with_prefill and not model.allows_prefill:
        raise InvalidRequest(
            f"The last message is an assistant message (a prefill), and no provider of "
            f"{task.model} continues one; end with a `user` or `tool` message.",
            code="invalidMessages",
            parameter=f"messages.{len(task.messages) - 1}.role",
        )


def check_context(task: TextInferenceTask, model: ModelSpec) -> None:
    """Refuse a prompt that cannot fit the model's context window with room for maxTokens
    (counted with a lower bound, so a prompt that fits is never refused)."""
    budget = model.context_window - task.settings.maxTokens
    texts = [m.content for m in task.messages if m.content]
    if task.settings.systemPrompt:
        texts.append(task.settings.systemPrompt)
    over = tokens_over(texts, budget)
    if over is not None:
        raise InvalidRequest(
            f"The messages are at least {over} tokens; with settings.maxTokens "
            f"({task.settings.maxTokens}) that is over {task.model}'s context window of "
            f"{model.context_window} tokens. Shorten the conversation or lower maxTokens.",
            code="contextLengthExceeded",
            parameter="messages",
        )


def seeds_for(task: TextInferenceTask) -> list[int]:
    if task.seed is not None:
        return [task.seed + i for i in range(task.numberResults)]
    # Random seeds in the unsigned 32-bit range (as Runware does), distinct per result.
    return random.sample(range(2**32), task.numberResults)


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
    ):
        self.owner = owner
        self.shedder = shedder
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.hub = hub
        self.tokens = tokens
        self.outbound = outbound
        self.images = images
        self.base_url = base_url
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
        inference: list[_Inference] = []
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
                    inference.append(
                        await self._accept(
                            slot, slot.task, subscriptions, alone=len(raw_tasks) == 1
                        )
                    )
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
    ) -> _Inference:
        """A valid textInference task, ready to submit (InvalidRequest if it is not)."""
        if task.deliveryMethod == "stream" and not alone:
            raise InvalidRequest(
                'A task with deliveryMethod "stream" must be the only task in its request '
                "(its response is the event stream).",
                code="invalidDeliveryMethod",
                parameter="deliveryMethod",
            )
        if task.deliveryMethod in ("sync", "stream") and self.shedder is not None:
            self.shedder.check(self.owner, task.numberResults)  # 503 serverBusy when swamped
        # A waiting task's subscription starts now, so Redis confirms it while the rest of
        # the request is checked; results can only arrive after it is live.
        sub = None
        if task.deliveryMethod in ("sync", "stream"):
            sub = await subscriptions.enter_async_context(
                watching(self.hub, self.store, task_ref(self.owner, task.taskUUID))
            )
        prepared = self._prepare(slot, task)
        if task.webhookURL is not None:
            await self._check_webhook(task.webhookURL)
        if task.inputs is not None:
            prepared.new.request["inputs"]["images"] = await self.images.references(
                self.owner, list(task.inputs.images)
            )
        prepared.sub = sub
        return prepared

    def _prepare(self, slot: Slot, task: TextInferenceTask) -> _Inference:
        model = self.catalog.get(task.model)
        if model is None:
            raise InvalidRequest(
                f"Unknown model {task.model!r}; available: {', '.join(self.catalog.ids())}.",
                code="unknownModel",
                parameter="model",
            )
        if task.settings.maxTokens > model.max_output_tokens:
            raise InvalidRequest(
                f"settings.maxTokens is {task.settings.maxTokens}; {task.model} produces at "
                f"most {model.max_output_tokens} output tokens.",
                code="invalidMaxTokens",
                parameter="settings.maxTokens",
            )
        check_prefill(task, model)
        check_context(task, model)
        ref = task_ref(self.owner, task.taskUUID)
        request = task.model_dump(mode="json", by_alias=True, exclude_none=True)
        new = NewTask(ref, fingerprint(slot.raw), request, seeds_for(task))
        return _Inference(slot, task, ref, new)

    async def _submit(self, work: list[_Inference], deadline: float) -> None:
        await asyncio.gather(*(confirmed(w.sub) for w in work if w.sub is not None))
        outcomes = await self.store.submit([w.new for w in work])
        waits = []
        for w, outcome in zip(work, outcomes, strict=True):
            if outcome.limited is not None:
                w.slot.errors.append(limit_error(outcome.limited))
            elif outcome.queue_full:
                w.slot.errors.append(
                    ServiceUnavailable(
                        "The queue is full; try again shortly.", code="queueFull", retry_after=5
                    )
                )
            elif not outcome.created and outcome.existing_fingerprint != w.new.fingerprint:
                w.slot.errors.append(
                    TaskConflict(
                        "This taskUUID was already used with a different request body; "
                        "use a new taskUUID for new work.",
                        parameter="taskUUID",
                    )
                )
            else:
                # New, or the same body again (no new work): answer with its state.
                waits.append(self._answer(w, outcome.created, deadline))
        await asyncio.gather(*waits)

    async def _answer(self, w: _Inference, created: bool, deadline: float) -> None:
        uuid, n = w.task.taskUUID, w.task.numberResults
        if w.task.deliveryMethod == "stream" and w.sub is not None:
            # A new task's subscription was live before it was enqueued: no replay needed.
            w.slot.stream = StreamPlan(
                TaskEvents(w.sub, self.store, w.ref, replay=not created),
                ChunkRenderer(uuid, n),
                cancel_on_disconnect=w.ref if w.task.cancelOnDisconnect else None,
            )
        elif w.sub is not None:
            waiting = collect_results(w.sub, self.store, w.ref, n, deadline, read_first=not created)
            if w.task.cancelOnDisconnect:
                results = await self._unless_disconnected(w, waiting)
            else:
                results = await waiting
            w.slot.pending_sync = len(results) < n
            if w.slot.pending_sync:  # a 202: the client polls, or follows the stream link
                links = self._links(uuid)
                w.slot.items.extend({**item, **links} for item in result_items(uuid, n, results))
            else:
                w.slot.items.extend(result_items(uuid, n, results))
        elif created:
            w.slot.items.append({**ProcessingItem(uuid).to_wire(), **self._links(uuid)})
        else:
            record = await self.store.get(w.ref)
            if record is not None:
                w.slot.items.extend(self._state_items(record))

    def _links(self, uuid: str) -> dict[str, Any]:
        """The task's links: `stream`, its event stream for a browser (absolute, signed). Kept
        under `links`, not as a top-level `...URL` field, which Runware's SDKs read as a
        finished result."""
        return {"links": {"stream": self.tokens.stream_url(self.base_url, self.owner, uuid)}}

    def _state_items(self, record: TaskRecord) -> list[dict[str, Any]]:
        """A task's current state, one item per result: as getResponse shows it, with the
        task's links and, for a task with a webhook, each result's delivery state."""
        uuid = record.ref.uuid
        links = self._links(uuid)
        items = []
        for item in result_items(uuid, record.number_results, record.results):
            shown = {**item, **links}
            delivery = record.deliveries.get(item["resultIndex"])
            if delivery is not None:
                shown["webhook"] = DeliveryState(**delivery).public()
            items.append(shown)
        return items

    async def _check_webhook(self, url: str) -> None:
        """The outbound guard's verdict on a webhook URL at submit time. A name that does not
        resolve now is accepted: delivery checks again, and retries on its schedule."""
        try:
            async with asyncio.timeout(self.settings.outbound_resolve_timeout_s):
                await check_url(url, self.outbound)
        except (OutboundUnresolvable, TimeoutError):
            return
        except OutboundRefused as exc:
            raise InvalidRequest(
                f"webhookURL is not allowed: {exc}.",
                code="invalidWebhookURL",
                parameter="webhookURL",
            ) from None

    # --- taskCancel and cancelOnDisconnect

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

    async def _unless_disconnected(
        self, w: _Inference, waiting: Coroutine[Any, Any, dict[int, ResultItem]]
    ) -> dict[int, ResultItem]:
        """The sync wait of a task that opted in to cancelOnDisconnect, cut short (and the
        task cancelled) if the client's connection closes first."""
        if self._disconnects is None:
            return await waiting
        results = await self._disconnects.unless_gone(waiting)
        if results is None:
            await self.cancels.on_disconnect(w.ref)
            return {}
        return results

    # --- getResponse

    async def _answer_lookups(self, slots: list[Slot]) -> None:
        refs = [task_ref(self.owner, slot.task.taskUUID) for slot in slots]  # type: ignore[union-attr]
        records = await self.store.get_many(refs)
        for slot, ref, record in zip(slots, refs, records, strict=True):
            if record is None:
                slot.errors.append(
                    TaskNotFound(
                        f"No task {ref.uuid} for this API key: it is unknown, expired, or "
                        "belongs to another key.",
                        parameter="taskUUID",
                    )
                )
                continue
            slot.items.extend(self._state_items(record))
