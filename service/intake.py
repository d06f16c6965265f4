"""Intake: a textInference task validated against the catalog, checked against shedding and
limits, and submitted (new work stored and enqueued), whoever answers it afterwards.

Intake knows nothing of how a task is answered, so every front door (the Runware envelope
in service/batch.py, an OpenAI-shaped facade) submits the same way and then picks its own
answerer (service/answers.py). One thing of answering leaks in on purpose: a task somebody
waits on (sync, stream) is subscribed to its event stream *before* it is submitted, so
nothing it publishes can be missed; the subscription is started early, while the rest of
the request is checked, and confirmed just before the submit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.catalog import Catalog, ModelSpec
from core.errors import InvalidRequest, ServiceUnavailable, TaskConflict, TaskwireError
from core.events import EventHub, Subscription
from core.keys import TaskRef
from core.outbound import OutboundPolicy, OutboundRefused, OutboundUnresolvable, check_url
from core.prompt_size import tokens_over
from core.protocol import TextInferenceTask, canonical_uuid
from core.settings import Settings
from core.store import NewTask, TaskStore
from core.tracing import current_carrier, span
from service.delivery import confirmed, watching
from service.images import Images
from service.limits import limit_error
from service.shedding import LoadShedder


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


@dataclass(eq=False)
class Accepted:
    """A valid task, ready to submit; `sub` is its event subscription when somebody waits."""

    task: TextInferenceTask
    ref: TaskRef
    new: NewTask
    sub: Subscription | None = None


@dataclass(eq=False)
class Submitted:
    """A task in storage: `created` if this submit stored it, else the same body was already
    there (no new work)."""

    accepted: Accepted
    created: bool

    @property
    def task(self) -> TextInferenceTask:
        return self.accepted.task

    @property
    def ref(self) -> TaskRef:
        return self.accepted.ref


class Intake:
    """Accepts and submits the textInference tasks of one API key owner."""

    def __init__(
        self,
        *,
        owner: str,
        settings: Settings,
        catalog: Catalog,
        store: TaskStore,
        hub: EventHub,
        outbound: OutboundPolicy,
        images: Images,
        shedder: LoadShedder | None = None,
    ):
        self.owner = owner
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.hub = hub
        self.outbound = outbound
        self.images = images
        self.shedder = shedder

    async def accept(
        self,
        task: TextInferenceTask,
        subscriptions: contextlib.AsyncExitStack,
        raw: dict[str, Any] | None = None,
    ) -> Accepted:
        """A task checked and ready to submit (InvalidRequest, or ServiceUnavailable when
        interactive work is shed). A sync or stream task's subscription is entered into
        `subscriptions`. `raw` is the body as the client sent it (its fingerprint tells a
        re-send from a conflict); a facade that built `task` itself may leave it out."""
        if task.deliveryMethod in ("sync", "stream") and self.shedder is not None:
            self.shedder.check(self.owner, task.numberResults)  # 503 serverBusy when swamped
        # A waiting task's subscription starts now, so Redis confirms it while the rest of
        # the request is checked; results can only arrive after it is live.
        sub = None
        if task.deliveryMethod in ("sync", "stream"):
            sub = await subscriptions.enter_async_context(
                watching(self.hub, self.store, task_ref(self.owner, task.taskUUID))
            )
        accepted = self._prepare(task, raw)
        if task.webhookURL is not None:
            await self._check_webhook(task.webhookURL)
        if task.inputs is not None:
            accepted.new.request["inputs"]["images"] = await self.images.references(
                self.owner, list(task.inputs.images)
            )
        accepted.sub = sub
        return accepted

    def _prepare(self, task: TextInferenceTask, raw: dict[str, Any] | None) -> Accepted:
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
        body = raw if raw is not None else request
        trace = current_carrier()  # the request's span: the worker continues its trace
        new = NewTask(ref, fingerprint(body), request, seeds_for(task), trace)
        return Accepted(task, ref, new)

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

    async def submit(self, accepted: Sequence[Accepted]) -> list[Submitted | TaskwireError]:
        """Store and enqueue the tasks in one round trip, once their subscriptions are
        confirmed; each is Submitted, or the error that refused it (a limit, the queue, a
        taskUUID already used with another body)."""
        unconfirmed = [a.sub for a in accepted if a.sub is not None and not a.sub.live]
        if len(unconfirmed) == 1:  # the usual case: no task (and loop turn) for a gather
            await confirmed(unconfirmed[0])
        elif unconfirmed:
            await asyncio.gather(*(confirmed(sub) for sub in unconfirmed))
        with span("tasks.submit", {"taskwire.tasks": len(accepted)}):
            outcomes = await self.store.submit([a.new for a in accepted])
        answers: list[Submitted | TaskwireError] = []
        for a, outcome in zip(accepted, outcomes, strict=True):
            if outcome.limited is not None:
                answers.append(limit_error(outcome.limited))
            elif outcome.queue_full:
                answers.append(
                    ServiceUnavailable(
                        "The queue is full; try again shortly.", code="queueFull", retry_after=5
                    )
                )
            elif not outcome.created and outcome.existing_fingerprint != a.new.fingerprint:
                answers.append(
                    TaskConflict(
                        "This taskUUID was already used with a different request body; "
                        "use a new taskUUID for new work.",
                        parameter="taskUUID",
                    )
                )
            else:
                # New, or the same body again (no new work): answered with its state.
                answers.append(Submitted(a, outcome.created))
        return answers
