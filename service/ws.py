"""The task WebSocket: `GET /v1` upgraded, speaking the `POST /v1` envelope (Runware's SDK's
default transport), with results pushed as they become final and sessions that resume.

- The first frame authenticates (`[{"taskType":"authentication","apiKey":…}]`, optionally
  with the `connectionSessionUUID` of a session to resume, and tasks after it); the answer
  is `{"data":[{"taskType":"authentication","connectionSessionUUID":…}]}`. A bad key, or no
  authentication within `ws_auth_timeout_s`, is an error frame and a close (1008).
- Every later frame is a batch run exactly as `POST /v1` runs it (service/batch.py over
  intake and answers: validation, idempotency, limits); its answers are one `{"data":[…]}`
  frame and one `{"errors":[…]}` frame per task that failed, naming its taskUUID.
- A textInference task submitted on the socket (sync or async) has each result pushed as
  `{"data":[item]}` once it is final; an async task is first acknowledged (`processing`).
  A stream task (alone in its frame) pushes its chunks, as the SSE stream renders them,
  each as `{"data":[chunk]}` (a failed result as `{"errors":[…]}`).
- The session (core/sessions.py) records the socket's outstanding tasks in Redis, so a
  client that reconnects within `ws_session_window_s` with its connectionSessionUUID, to
  any API process, is sent the results it missed, once, in the order they became final.
- A socket that closes (other than for a server shutdown) cancels its sync and stream tasks
  still running that asked for `cancelOnDisconnect`, as the HTTP path does.

Each socket's results come from the process's one EventHub (no Redis connection per
socket). Frames wait in a per-socket queue of `ws_send_queue`; a client that lets it fill is
closed (1008) and gets its results through getResponse or by resuming. A frame over
`max_body_bytes` is refused and the socket closed (1009).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, WebSocket
from redis.exceptions import RedisError
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from core.contract import Final, ProcessingItem, ResultItem
from core.errors import (
    AuthenticationFailed,
    PayloadTooLarge,
    ServiceUnavailable,
    TaskwireError,
)
from core.events import Event, Subscription, TaskEvents, stream_id_order
from core.keys import TaskRef
from core.protocol import AuthenticationTask, TaskErrors, canonical_uuid, parse_task
from core.sessions import Outstanding, SessionStore
from core.settings import Settings
from service import metrics
from service.answers import Answers, StreamPlan
from service.api import encode_json, parse_envelope
from service.batch import Batch, Slot
from service.cancel import TaskCancels, in_background
from service.delivery import confirmed
from service.intake import Submitted
from service.limits import check_reads
from service.origin import PublicOrigin, TrustedProxies
from service.state import AppState
from service.streaming import ChunkRenderer

log = structlog.get_logger("taskwire.ws")
router = APIRouter()

POLICY = 1008  # authentication failed or missing, or the client reads too slowly
TOO_BIG = 1009
GOING_AWAY = 1001
# Results pushed together share a frame up to this size (a bigger result goes alone).
RESULTS_FRAME_BYTES = 256 * 1024


class SocketChunks(ChunkRenderer):
    """The SSE stream's chunks as socket frames: `{"data":[chunk]}`, or `{"errors":[…]}`."""

    @staticmethod
    def _event(event_id: str, payload: dict[str, Any]) -> bytes:
        return encode_json(payload if "errors" in payload else {"data": [payload]})


class Sockets:
    """The process's open task sockets, drained and closed (1001) on shutdown."""

    def __init__(self) -> None:
        self.open: set[Connection] = set()
        self.draining = False

    async def drain(self, grace_s: float) -> None:
        """Stop taking sockets, give the open ones up to `grace_s` to push what they owe,
        then close them with 1001 (their clients resume elsewhere)."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                for conn in list(self.open):
                    await conn.settled()
        await asyncio.gather(
            *(
                conn.close(GOING_AWAY, "going away: the server is shutting down")
                for conn in list(self.open)
            )
        )


def owed(task: Outstanding, pushed: set[int]) -> bool:
    """Whether some result of the task was neither sent nor queued for sending yet."""
    return any(
        not task.was_sent(index) and index not in pushed for index in range(task.number_results)
    )


def _settle(future: asyncio.Future[None]) -> Callable[[object], None]:
    def settle(_: object) -> None:
        if not future.done():
            future.set_result(None)

    return settle


def parse_frame(body: bytes) -> list[Any]:
    """A frame's tasks (the envelope as POST /v1 takes it), counted by task type."""
    try:
        tasks = parse_envelope(body)
    except TaskwireError:
        metrics.socket_frame(None)
        raise
    metrics.socket_frame(tasks)
    return tasks


def sockets_of(app: FastAPI) -> Sockets:
    found: Sockets | None = getattr(app.state, "sockets", None)
    if found is None:
        found = app.state.sockets = Sockets()
    return found


def http_base(websocket: WebSocket) -> str:
    """The base URL links are built on: the socket's, with its http(s) scheme."""
    base = str(websocket.base_url)
    return "http" + base[2:] if base.startswith("ws") else base


async def task_socket(websocket: WebSocket) -> None:
    sockets = sockets_of(websocket.app)
    conn = Connection(websocket, websocket.app.state.taskwire, sockets)
    sockets.open.add(conn)
    metrics.socket_opened()
    try:
        await conn.run()
    finally:
        sockets.open.discard(conn)
        metrics.socket_closed(conn.close_code)
        await conn.finish()


class Connection:
    """One authenticated task socket.

    An idle socket is most of what a process holds by the thousand, so everything a socket
    only needs once it is used (its send queue and writer, its frame slots, the event
    draining waits on, the session store, the answers' link builder) is made on first use.
    """

    __slots__ = (
        "_answers",
        "_closer",
        "_dirty",
        "_flusher",
        "_frames",
        "_outbox",
        "_quiet",
        "_results",
        "_writer",
        "background",
        "cancel_on_close",
        "close_code",
        "closing",
        "owner",
        "pumps",
        "session",
        "sockets",
        "state",
        "tracked",
        "watchers",
        "ws",
    )

    def __init__(self, websocket: WebSocket, state: AppState, sockets: Sockets):
        self.ws = websocket
        self.state = state
        self.sockets = sockets
        self.owner = ""
        self.session = ""
        self.tracked: dict[str, Outstanding] = {}  # by canonical taskUUID
        # sync tasks sent here with cancelOnDisconnect: cancelled if the socket closes first
        self.cancel_on_close: dict[str, TaskRef] = {}  # by canonical taskUUID
        self.watchers: dict[str, asyncio.Task[None]] = {}
        # frames being answered, and stream tasks' chunk pumps (dicts as ordered sets)
        self.background: dict[asyncio.Task[None], None] = {}
        self.pumps: dict[asyncio.Task[None], None] = {}
        self.closing = False
        self.close_code: int | None = None  # the first close: the server's or the client's
        self._answers: Answers | None = None
        self._outbox: asyncio.Queue[tuple[bytes, Callable[[], None] | None]] | None = None
        self._frames: asyncio.Semaphore | None = None
        self._writer: asyncio.Task[None] | None = None
        self._dirty: dict[str, Outstanding | None] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._quiet: asyncio.Event | None = None  # made when draining waits on this socket
        # results waiting for this loop turn to end, to go out together in one frame
        self._results: list[tuple[str, Outstanding, ResultItem]] | None = None

    @property
    def settings(self) -> Settings:
        return self.state.settings

    @property
    def sessions(self) -> SessionStore:
        state = self.state
        return SessionStore(state.redis, state.store.keys, state.settings.ws_session_window_s)

    @property
    def answers(self) -> Answers:
        if self._answers is None:
            self._answers = Answers(
                owner=self.owner,
                store=self.state.store,
                tokens=self.state.tokens,
                base_url=http_base(self.ws),
            )
        return self._answers

    @property
    def idle(self) -> bool:
        """Nothing owed to the client: no outstanding task, no frame waiting to go."""
        return (
            not self.tracked
            and self._results is None
            and (self._outbox is None or self._outbox.empty())
            and not self.background
            and not self.pumps
        )

    async def settled(self) -> None:
        """Return once nothing is owed to the client (what draining waits for)."""
        if self.idle:
            return
        if self._quiet is None:
            self._quiet = asyncio.Event()
        self._quiet.clear()
        await self._quiet.wait()

    # --- the socket's life

    async def run(self) -> None:
        await self.ws.accept()
        if self.sockets.draining:
            await self.close(GOING_AWAY, "going away: the server is shutting down")
            return
        rest = await self._authenticate()
        if rest is None:
            return
        if rest:
            await self._read_frame(b"", rest)
        limit = self.settings.max_body_bytes
        while not self.closing:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self._closed_by(message)
                break
            body = message.get("bytes") or (message.get("text") or "").encode()
            if len(body) > limit:
                metrics.socket_frame(None)
                error = PayloadTooLarge(f"The frame is over the {limit}-byte limit.")
                await self._send_now({"errors": [error.to_item()]})
                await self.close(TOO_BIG, "frame too large")
                break
            await self._read_frame(body)

    async def _read_frame(self, body: bytes, tasks: list[Any] | None = None) -> None:
        if self._frames is None:
            self._frames = asyncio.Semaphore(self.settings.ws_frames_in_flight)
        await self._frames.acquire()  # past the cap, the socket is read no further
        self._spawn(self._frame(body, tasks))

    async def finish(self) -> None:
        """After the socket closed: let frames being answered settle (their tasks join the
        session), stop pushing, record the session and restart its window."""
        self.closing = True
        if self.background:
            await asyncio.wait(list(self.background), timeout=5)
        self._cancel_on_close()
        for task in [*self.watchers.values(), *self.background, *self.pumps]:
            task.cancel()
        if self._writer is not None:
            self._writer.cancel()
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        if self.session:
            with contextlib.suppress(RedisError, OSError):
                if self._dirty:
                    await self.sessions.write(self.session, self.owner, self._dirty)
                await self.sessions.touch(self.session)

    def _cancel_on_close(self) -> None:
        """The socket closed (not for a server shutdown, whose clients resume elsewhere):
        cancel its sync tasks still owed that asked for cancelOnDisconnect (its stream
        tasks' cancel is their pump's cleanup)."""
        if self.sockets.draining:
            return
        owed_refs = [ref for key, ref in self.cancel_on_close.items() if key in self.tracked]
        if not owed_refs:
            return
        cancels = TaskCancels(self.state.store, self.state.hub, self.state.deliveries)
        for ref in owed_refs:
            in_background(cancels.on_disconnect(ref))

    def _closed_by(self, message: Any) -> None:
        if self.close_code is None:
            self.close_code = message.get("code")

    async def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        if self.close_code is None:
            self.close_code = code
        if self._writer is not None:
            self._writer.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)

    # --- authentication and resume

    async def _authenticate(self) -> list[Any] | None:
        """Authenticate from the first frame; the tasks that came after the authentication
        task, or None when the socket was refused (and closed)."""
        timeout = self.settings.ws_auth_timeout_s
        try:
            async with asyncio.timeout(timeout):
                message = await self.ws.receive()
        except TimeoutError:
            await self._refuse(
                AuthenticationFailed(
                    f"No authentication within {timeout:g} s: the first frame must be "
                    '[{"taskType":"authentication","apiKey":"…"}].',
                    code="missingApiKey",
                ),
                "authentication timeout",
            )
            return None
        if message["type"] == "websocket.disconnect":
            self._closed_by(message)
            return None
        body = message.get("bytes") or (message.get("text") or "").encode()
        try:
            if len(body) > self.settings.max_body_bytes:
                metrics.socket_frame(None)
                raise PayloadTooLarge(
                    f"The frame is over the {self.settings.max_body_bytes}-byte limit."
                )
            tasks = parse_frame(body)
            first = tasks[0]
            if not isinstance(first, dict) or first.get("taskType") != "authentication":
                raise AuthenticationFailed(
                    'The first frame must authenticate: [{"taskType":"authentication",'
                    '"apiKey":"…"}].',
                    code="missingApiKey",
                    parameter="apiKey",
                )
            first = dict(first)
            resume = first.pop("connectionSessionUUID", None)
            try:
                auth = parse_task(first)
            except TaskErrors as exc:
                raise exc.errors[0] from None
            assert isinstance(auth, AuthenticationTask)
            self.owner = self.state.keyring.authenticate(auth.apiKey)
            missed = await self._session(resume if isinstance(resume, str) else None)
        except TaskwireError as exc:
            await self._refuse(exc, "authentication failed")
            return None
        except (RedisError, OSError):
            await self._refuse(
                ServiceUnavailable("Task storage is unavailable; try again shortly."),
                "storage unavailable",
            )
            return None
        await self._send_now(
            {"data": [{"taskType": "authentication", "connectionSessionUUID": self.session}]}
        )
        if missed:
            self._resume(*missed)
        return tasks[1:]

    async def _refuse(self, error: TaskwireError, reason: str) -> None:
        code = TOO_BIG if isinstance(error, PayloadTooLarge) else POLICY
        await self._send_now({"errors": [error.to_item()]})
        await self.close(code, reason)

    async def _session(
        self, resume: str | None
    ) -> tuple[dict[str, Outstanding], dict[str, list[tuple[str, int, ResultItem]]]] | None:
        """Take over the session named `resume` if it is this key's and still kept (its
        outstanding tasks, and the results of theirs stored since), else start a new one."""
        if resume:
            owner, tasks = await self.sessions.load(resume)
            if owner == self.owner:
                self.session = resume
                return tasks, await self._stored_finals(tasks)
        self.session = str(uuid.uuid4())
        return None

    async def _stored_finals(
        self, tasks: dict[str, Outstanding]
    ) -> dict[str, list[tuple[str, int, ResultItem]]]:
        """Per task, its final events stored so far: (event id, index, item)."""
        store = self.state.store
        keys = list(tasks)
        events = await asyncio.gather(
            *(store.read_events(TaskRef(self.owner, key)) for key in keys)
        )
        found: dict[str, list[tuple[str, int, ResultItem]]] = {}
        for key, stored in zip(keys, events, strict=True):
            found[key] = [
                (event_id, body.index, body.item)
                for event_id, body in stored
                if isinstance(body, Final)
            ]
        return found

    def _resume(
        self,
        tasks: dict[str, Outstanding],
        finals: dict[str, list[tuple[str, int, ResultItem]]],
    ) -> None:
        """Send what the session missed, in the order it became final; follow the rest."""
        missed: list[tuple[tuple[int, int], str, int, ResultItem]] = []
        pushed: dict[str, set[int]] = {key: set() for key in tasks}
        for key, task in tasks.items():
            self.tracked[key] = task
            for event_id, index, item in finals.get(key, []):
                if (
                    0 <= index < task.number_results
                    and not task.was_sent(index)
                    and index not in pushed[key]
                ):
                    pushed[key].add(index)
                    missed.append((stream_id_order(event_id), key, index, item))
        missed.sort(key=lambda entry: entry[0])
        for _order, key, _index, item in missed:
            self._push_result(key, tasks[key], item)
        for key, task in tasks.items():
            last = max((f[0] for f in finals.get(key, [])), key=stream_id_order, default="0-0")
            if owed(task, pushed[key]):
                self._watch(key, last, pushed[key])
        log.info("ws.resumed", session=self.session, tasks=len(tasks), missed=len(missed))

    # --- frames

    async def _frame(self, body: bytes, tasks: list[Any] | None) -> None:
        try:
            if tasks is None:
                tasks = parse_frame(body)
            await check_reads(self.state.read_bucket, self.owner, tasks)
            batch = Batch(
                owner=self.owner,
                settings=self.settings,
                catalog=self.state.catalog,
                store=self.state.store,
                hub=self.state.hub,
                tokens=self.state.tokens,
                outbound=self.state.outbound,
                images=self.state.images,
                base_url=http_base(self.ws),
                deliveries=self.state.deliveries,
                shedder=self.state.shedder,
                answer_waiting=self._answer_waiting,
            )
            slots = await batch.run(tasks)
        except TaskwireError as exc:
            self._refused(tasks or [], exc)
        except (RedisError, OSError):
            error = ServiceUnavailable("Task storage is unavailable; try again shortly.")
            self._refused(tasks or [], error)
        else:
            self._answer(slots)

    def _refused(self, tasks: list[Any], error: TaskwireError) -> None:
        """A frame refused as a whole: one error frame per task, naming it."""
        scopes = [Slot(raw).scope() for raw in tasks] or [{}]
        for scope in scopes:
            self.push(encode_json({"errors": [error.to_item(**scope)]}))

    def _answer(self, slots: list[Slot]) -> None:
        data = [item for slot in slots for item in slot.items]
        if data:
            self.push(encode_json({"data": data}))
        for slot in slots:
            if slot.errors:
                items = [error.to_item(**slot.scope()) for error in slot.errors]
                self.push(encode_json({"errors": items}))
            if slot.stream is not None:
                pump = asyncio.create_task(self._pump(slot.stream))
                self.pumps[pump] = None
                pump.add_done_callback(self._pump_done)

    async def _answer_waiting(self, submitted: Submitted) -> list[dict[str, Any]]:
        """A sync or async task submitted on the socket: its results will be pushed; an
        async one is acknowledged now."""
        task = submitted.task
        if task.deliveryMethod == "sync" and task.cancelOnDisconnect:
            self.cancel_on_close[canonical_uuid(task.taskUUID)] = submitted.ref
        # A task this submit created, whose subscription intake confirmed before storing it
        # (a sync task's), has no event that subscription missed: its follower takes what
        # that one holds instead of reading the task's stored events.
        early = submitted.accepted.sub if submitted.created else None
        await self.track(task.taskUUID, task.numberResults, early)
        if task.deliveryMethod == "async":
            return [
                {**ProcessingItem(task.taskUUID).to_wire(), **self.answers.links(task.taskUUID)}
            ]
        return []

    def _pump_done(self, pump: asyncio.Task[None]) -> None:
        self.pumps.pop(pump, None)
        self._note()

    async def _pump(self, plan: StreamPlan) -> None:
        """A stream task's chunks, pushed as they come, until every result is final."""
        renderer = SocketChunks(plan.renderer.task_uuid, plan.renderer.number_results)
        plan.renderer = renderer  # what the stream's cleanup looks at (cancelOnDisconnect)
        try:
            while not renderer.done:
                frame = renderer.render(await plan.events.next())
                if frame is not None:
                    self.push(frame)
        finally:
            if self.sockets.draining:  # a server shutdown: the client resumes elsewhere
                plan.cancel_on_disconnect = None
            if plan.cleanup is not None:
                await plan.cleanup.aclose()

    # --- pushing results

    async def track(
        self, spelled: str, number_results: int, early: Subscription | None = None
    ) -> None:
        """Push the task's results as they become final (once per socket). Returns once
        its follower is subscribed to the task's events."""
        key = canonical_uuid(spelled)
        if key in self.tracked:
            return
        task = Outstanding(spelled, number_results)
        self.tracked[key] = task
        self._changed(key, task)
        subscribed = asyncio.get_running_loop().create_future()
        watcher = self._watch(key, "0-0", set(), early, subscribed)
        watcher.add_done_callback(_settle(subscribed))  # cancelled before it subscribed
        await subscribed

    def _watch(
        self,
        key: str,
        after: str,
        pushed: set[int],
        early: Subscription | None = None,
        subscribed: asyncio.Future[None] | None = None,
    ) -> asyncio.Task[None]:
        watcher = asyncio.create_task(self._follow(key, after, pushed, early, subscribed))
        self.watchers[key] = watcher
        return watcher

    async def _follow(
        self,
        key: str,
        after: str,
        pushed: set[int],
        early: Subscription | None,
        subscribed: asyncio.Future[None] | None,
    ) -> None:
        task = self.tracked[key]
        ref = TaskRef(self.owner, key)
        store = self.state.store
        try:
            async with self.state.hub.subscribe(store.keys.events(ref)) as sub:
                if subscribed is not None and not subscribed.done():
                    subscribed.set_result(None)
                replay = True
                if early is not None:
                    # Everything published since `early` was confirmed reached it or, from
                    # now on, `sub`: take what it holds, then follow `sub` after that.
                    replay = False
                    while early.lagged or not early.queue.empty():
                        item = await early.get()  # at once: something is there
                        if not isinstance(item, Event):
                            replay = True  # it missed some: read storage after `after`
                            break
                        if item.order > stream_id_order(after):
                            after = item.id
                            self._take(key, task, pushed, item.body)
                if replay:
                    await confirmed(sub)
                events = TaskEvents(sub, store, ref, after, replay=replay)
                while owed(task, pushed):
                    self._take(key, task, pushed, (await events.next()).body)
        except (TaskwireError, RedisError, OSError) as exc:
            log.warning("ws.follow_failed", error=type(exc).__name__, session=self.session)
        finally:
            if self.watchers.get(key) is asyncio.current_task():
                del self.watchers[key]

    def _take(self, key: str, task: Outstanding, pushed: set[int], body: object) -> None:
        """Push a final result of the task not pushed yet."""
        if (
            isinstance(body, Final)
            and 0 <= body.index < task.number_results
            and not task.was_sent(body.index)
            and body.index not in pushed
        ):
            pushed.add(body.index)
            self._push_result(key, task, body.item)

    def _push_result(self, key: str, task: Outstanding, item: ResultItem) -> None:
        """Queue a result for the client: the results that became final in one turn of the
        loop (the hub fans out a whole Redis read in one) go out together, in the order they
        came, as `{"data":[…]}` frames of up to RESULTS_FRAME_BYTES."""
        if self.closing:
            return
        if self._results is None:
            self._results = []
            asyncio.get_running_loop().call_soon(self._send_results)
        self._results.append((key, task, item))

    def _send_results(self) -> None:
        results, self._results = self._results or [], None
        frame: list[bytes] = []
        size = 0
        batch: list[tuple[str, Outstanding, ResultItem]] = []
        for key, task, item in results:
            encoded = encode_json({**item.to_wire(), "taskUUID": task.spelled})
            if frame and size + len(encoded) > RESULTS_FRAME_BYTES:
                self._push_results(frame, batch)
                frame, size, batch = [], 0, []
            frame.append(encoded)
            size += len(encoded) + 1
            batch.append((key, task, item))
        if frame:
            self._push_results(frame, batch)
        self._note()

    def _push_results(
        self, items: list[bytes], results: list[tuple[str, Outstanding, ResultItem]]
    ) -> None:
        def sent() -> None:
            for key, task, item in results:
                task.sent |= 1 << item.index
                if task.complete:
                    if self.tracked.pop(key, None) is not None:
                        self._changed(key, None)
                else:
                    self._changed(key, task)

        self.push(b'{"data":[' + b",".join(items) + b"]}", sent)

    def push(self, frame: bytes, on_sent: Callable[[], None] | None = None) -> None:
        """Queue a frame for the client; a client that lets the queue fill is closed."""
        if self.closing:
            return
        if self._outbox is None:
            self._outbox = asyncio.Queue(self.settings.ws_send_queue)
        try:
            self._outbox.put_nowait((frame, on_sent))
        except asyncio.QueueFull:
            log.warning("ws.slow_reader", session=self.session, queued=self._outbox.qsize())
            self._closer = asyncio.create_task(
                self.close(
                    POLICY,
                    "send queue full: the client reads too slowly; resume the session or "
                    "use getResponse",
                )
            )
            return
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(self._outbox))

    async def _write(self, outbox: asyncio.Queue[tuple[bytes, Callable[[], None] | None]]) -> None:
        while True:
            frame, on_sent = await outbox.get()
            try:
                await self.ws.send_text(frame.decode())
            except Exception:  # the socket is gone: the reader sees the disconnect
                self.closing = True
                return
            if on_sent is not None:
                on_sent()
            self._note()

    def _note(self) -> None:
        """Wake a drain waiting on this socket once nothing is owed."""
        if self._quiet is not None and self.idle:
            self._quiet.set()

    async def _send_now(self, body: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self.ws.send_text(encode_json(body).decode())

    # --- the session record

    def _changed(self, key: str, task: Outstanding | None) -> None:
        self._dirty[key] = task
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Write the session's changes, coalescing those made while a write is on its way."""
        while self._dirty:
            changes, self._dirty = self._dirty, {}
            try:
                await self.sessions.write(self.session, self.owner, changes)
            except (RedisError, OSError) as exc:
                log.warning("ws.session_write_failed", error=type(exc).__name__)
                return

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Answer a frame in the background (holding one of the socket's frame slots)."""
        task = asyncio.create_task(work)
        self.background[task] = None

        def done(finished: asyncio.Task[None]) -> None:
            self.background.pop(finished, None)
            if self._frames is not None:
                self._frames.release()
            self._note()

        task.add_done_callback(done)


class _Inbox:
    """What uvicorn's protocol asks of its receive queue (put_nowait, get, empty), for its
    one reader, without an asyncio.Queue's three deques and event (some 3 KB a socket).
    uvicorn stops reading the socket while a message waits, so it holds a few at most."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class _Flag:
    """asyncio.Event's set, clear and wait, with no deque until somebody waits (uvicorn's
    "writable" flag, set unless the transport's buffer is full)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if not self._set:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter
        return True


class LeanSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websockets protocol (its default), lighter for the thousands of
    idle sockets a process holds (`python -m service` runs uvicorn with it):

    - the task socket (`/v1`, `/v1/`) goes straight to `task_socket` behind PublicOrigin
      (service/origin.py), not through the whole application: FastAPI's and Starlette's
      layers (error and exception middleware, exit stacks, the router) would otherwise each
      keep a frame alive for the socket's life. They do nothing for this socket: tracing
      and the body limit are HTTP-only, and an exception still reaches uvicorn, which closes
      the socket. Any other path, and an app that is not taskwire's, take the usual way;
    - its receive queue and writable flag are the lighter `_Inbox` and `_Flag`;
    - it lets go of the upgrade request and response once the handshake is done (it never
      reads them again).

    It relies on uvicorn's internals (`queue`, `writable`, `request`, `response`,
    `run_asgi`, uvicorn 0.54): the WebSocket tests run against it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    async def run_asgi(self) -> None:
        if self.scope["path"] in SOCKET_PATHS:
            door = socket_door(self.config.app)
            if door is not None:
                self.app = door
        await super().run_asgi()

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if self.handshake_complete and hasattr(self, "request"):
            del self.request, self.response


def socket_door(app: object) -> ASGIApp | None:
    """The task socket as an ASGI app of its own (PublicOrigin, then `task_socket`), made
    once per application after its startup; None for an app that is not taskwire's."""
    if not isinstance(app, FastAPI):
        return None
    door: ASGIApp | None = getattr(app.state, "socket_door", None)
    if door is not None:
        return door
    state: AppState | None = getattr(app.state, "taskwire", None)
    if state is None:  # not started
        return None

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = app  # what Starlette sets: the WebSocket's `app`
        await task_socket(WebSocket(scope, receive, send))

    door = app.state.socket_door = PublicOrigin(
        endpoint,
        public_base_url=state.settings.public_base_url,
        trusted=TrustedProxies(state.settings.trusted_proxies),
    )
    return door


# Plain Starlette routes, not FastAPI's: FastAPI's websocket route solves dependencies
# inside exit stacks of its own that stay open, with their frames, for the socket's life.
SOCKET_PATHS = ("/v1", "/v1/")
router.routes += [WebSocketRoute(path, task_socket) for path in SOCKET_PATHS]

__all__ = ["Connection", "LeanSocketProtocol", "Sockets", "router", "socket_door", "sockets_of"]
