"""Per-task event streams: many local readers over one Redis pub/sub connection, resumable by id.

Workers append events to a task's Redis Stream and publish "<id> <payload>" on a channel of
the same name in one script (core.store). A process that waits on tasks holds one `EventHub`:
a single pub/sub connection whose messages are fanned out to local subscriptions. A reader
subscribes first, then reads what the stream already holds, then takes live messages,
dropping ids it has seen: no gap, no duplicate, and no Redis connection per reader.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from core.contract import TaskEvent, decode_event
from core.keys import TaskRef
from core.store import TaskStore

log = structlog.get_logger("taskwire.events")


@dataclass(frozen=True, slots=True)
class Event:
    """A task event and its stream id; `body` is None for a kind this version does not
    know (readers skip it, keeping its id). On a channel subscribed with
    `task_events=False` (other notices sharing the process's one connection), `id` is the
    message's first word and `raw` the rest, undecoded."""

    id: str
    body: TaskEvent | None
    raw: bytes = b""

    @property
    def order(self) -> tuple[int, int]:
        return stream_id_order(self.id)


def stream_id_order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


class _Resync:
    """Live messages may have been missed (reconnect or a full queue): re-read from storage."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = _Resync()

_UNSUBSCRIBE_BATCH = 1000  # channels per UNSUBSCRIBE the sweeper sends


@dataclass(eq=False)
class Subscription:
    channel: bytes
    hub: EventHub
    queue: asyncio.Queue[Event | _Resync] = field(
        default_factory=lambda: asyncio.Queue(maxsize=1024)
    )
    lagged: bool = False

    @property
    def live(self) -> bool:
        """Whether Redis has confirmed the subscription (`ready` would return at once)."""
        return self.hub._channels[self.channel].live.is_set()

    async def ready(self) -> None:
        """Return once Redis has confirmed the subscription, so nothing published is missed."""
        await self.hub._channels[self.channel].live.wait()

    async def get(self) -> Event | _Resync:
        """The next live event, or RESYNC when some may have been missed."""
        if self.lagged:
            # Whatever is queued will be re-read from storage in order.
            self.lagged = False
            while not self.queue.empty():
                self.queue.get_nowait()
            return RESYNC
        return await self.queue.get()

    def request_resync(self) -> None:
        """Make the next get() return RESYNC (to read what was stored before subscribing)."""
        self.lagged = True

    def _deliver(self, item: Event | _Resync) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.lagged = True


@dataclass(eq=False)
class _Channel:
    subscribers: set[Subscription] = field(default_factory=set)
    # SUBSCRIBE/UNSUBSCRIBE commands sent and not yet confirmed, and what was asked last:
    # Redis answers them in order on one connection, so the channel is live exactly when
    # nothing is pending and the last command was SUBSCRIBE.
    pending: int = 0
    want: bool = False
    live: asyncio.Event = field(default_factory=asyncio.Event)
    idle_since: float | None = None
    # Set when the connection dropped: once the channel is live again, its readers are told
    # to re-read storage (earlier, and events published in between would be lost).
    resync_when_live: bool = False
    # Messages are task events (decoded once for every reader), or notices passed raw.
    task_events: bool = True


class EventHub:
    """Fan-out of Redis pub/sub messages to local subscriptions over one connection."""

    def __init__(self, redis: Redis, *, unsubscribe_after_s: float = 2.0):
        self._redis = redis
        self._channels: dict[bytes, _Channel] = {}
        self._pubsub: PubSub | None = None
        self._connection: Connection | None = None  # the PubSub's, once it is open
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._unsubscribe_after_s = unsubscribe_after_s
        # A channel of our own keeps the connection in subscribed mode when nothing else is.
        self._control = f"taskwire:hub:{uuid.uuid4().hex}".encode()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-hub")
        self._sweeper = asyncio.create_task(self._sweep(), name="event-hub-sweeper")

    async def close(self) -> None:
        for task in (self._task, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    @property
    def subscriber_count(self) -> int:
        return sum(len(channel.subscribers) for channel in self._channels.values())

    @contextlib.asynccontextmanager
    async def subscribe(
        self, channel: str, *, task_events: bool = True
    ) -> AsyncIterator[Subscription]:
        """Subscribe to a channel; `task_events=False` for notices that are not task events
        (delivered raw), so every listener of the process shares this one connection."""
        name = channel.encode()
        sub = Subscription(name, self)
        state = self._channels.setdefault(name, _Channel(task_events=task_events))
        state.subscribers.add(sub)
        state.idle_since = None
        if not state.want:
            await self._send(name, state, subscribe=True)
        try:
            yield sub
        finally:
            state.subscribers.discard(sub)
            if not state.subscribers:
                state.idle_since = asyncio.get_running_loop().time()

    async def _send(self, name: bytes, state: _Channel, *, subscribe: bool) -> None:
        await self._send_many([(name, state)], subscribe=subscribe)

    async def _send_many(self, channels: list[tuple[bytes, _Channel]], *, subscribe: bool) -> None:
        """One SUBSCRIBE (or UNSUBSCRIBE) command for all of `channels`: Redis answers it
        with one confirmation per channel, in order."""
        for _name, state in channels:
            state.want = subscribe
            state.live.clear()
        connection = self._connection
        if connection is None or not self._connected.is_set():
            return  # the connection loop subscribes everything wanted when it (re)connects
        for _name, state in channels:
            state.pending += 1
        try:
            # Straight to the connection: redis-py's PubSub bookkeeping of channels (and
            # its per-command connect check and event dispatch) is of no use to the hub,
            # which keeps its own and replaces the whole PubSub when the connection drops.
            await connection.send_command(
                "SUBSCRIBE" if subscribe else "UNSUBSCRIBE",
                *(name for name, _state in channels),
                check_health=False,
            )
        except (RedisError, OSError):
            for _name, state in channels:  # the reader notices the broken connection
                state.pending -= 1

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._connect_and_read()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._connected.clear()
                log.warning("events.hub_disconnected", error=type(exc).__name__)
                for state in self._channels.values():
                    state.live.clear()
                    state.pending = 0
                    state.resync_when_live = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                backoff = 0.05

    async def _connect_and_read(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        pubsub = self._redis.pubsub()
        self._pubsub = pubsub
        self._connection = None
        for name, state in list(self._channels.items()):
            if not state.want and not state.subscribers:
                del self._channels[name]
        # The first command opens the connection; only then may subscribe() send its own
        # SUBSCRIBEs (two coroutines opening it at once would each get a connection).
        await pubsub.subscribe(self._control)
        connection = pubsub.connection
        assert connection is not None
        self._connection = connection
        self._connected.set()
        wanted = [name for name, state in self._channels.items() if state.want]
        for name in wanted:
            self._channels[name].pending += 1
        if wanted:
            await connection.send_command("SUBSCRIBE", *wanted, check_health=False)
        while True:
            # Replies straight off the connection, as hiredis parses them: [b"message",
            # channel, data], or [b"subscribe" / b"unsubscribe", channel, count].
            reply = await connection.read_response(disconnect_on_error=False, push_request=True)
            if not isinstance(reply, list) or len(reply) < 3:
                continue
            kind, name = reply[0], reply[1]
            if kind == b"message":
                self._dispatch(name, reply[2])
            elif kind in (b"subscribe", b"unsubscribe"):
                found = self._channels.get(name)
                if found is None:
                    continue
                state = found
                state.pending = max(state.pending - 1, 0)
                if state.pending == 0 and state.want:
                    state.live.set()
                    if state.resync_when_live:
                        state.resync_when_live = False
                        for sub in state.subscribers:
                            sub._deliver(RESYNC)
                elif state.pending == 0 and not state.subscribers and not state.want:
                    del self._channels[name]

    def _dispatch(self, name: bytes, data: bytes) -> None:
        state = self._channels.get(name)
        if state is None or not state.subscribers:
            return
        event_id, _, payload = data.partition(b" ")
        if state.task_events:
            event = Event(event_id.decode(), decode_event(payload))  # once for all readers
        else:
            event = Event(event_id.decode(), None, payload)
        for sub in state.subscribers:
            sub._deliver(event)

    async def _sweep(self) -> None:
        """Unsubscribe channels nobody has listened to for a while (in one place, lazily, so a
        reader that comes back quickly finds its channel still live)."""
        while True:
            await asyncio.sleep(self._unsubscribe_after_s / 2)
            now = asyncio.get_running_loop().time()
            names = list(self._channels)
            # one UNSUBSCRIBE for many channels, not a command (and a write) for each
            for start in range(0, len(names), _UNSUBSCRIBE_BATCH):
                idle = [
                    (name, state)
                    for name in names[start : start + _UNSUBSCRIBE_BATCH]
                    if (state := self._channels.get(name)) is not None
                    and state.want
                    and not state.subscribers
                    and state.idle_since is not None
                    and now - state.idle_since >= self._unsubscribe_after_s
                ]
                if not idle:
                    continue
                await self._send_many(idle, subscribe=False)
                if self._connection is None or not self._connected.is_set():
                    for name, state in idle:
                        if not state.want and not state.subscribers:
                            self._channels.pop(name, None)


class TaskEvents:
    """A task's events after an id, in order and once each: what storage holds first, then
    live ones. `sub` must be confirmed before the first `next()`; `replay=False` skips the
    storage read for a task enqueued only after that (it cannot have events before)."""

    def __init__(
        self,
        sub: Subscription,
        store: TaskStore,
        ref: TaskRef,
        after: str = "0-0",
        *,
        replay: bool = True,
    ):
        self._sub = sub
        self._store = store
        self._ref = ref
        self._last = stream_id_order(after)
        self._buffer: collections.deque[Event] = collections.deque()
        if replay:
            sub.request_resync()

    @property
    def last_id(self) -> str:
        return f"{self._last[0]}-{self._last[1]}"

    async def next(self) -> Event:
        """The next event; safe to cancel (a timeout loses nothing)."""
        while not self._buffer:
            item = await self._sub.get()
            if isinstance(item, _Resync):
                try:
                    stored = await self._store.read_events(self._ref, after=self.last_id)
                except BaseException:
                    self._sub.request_resync()  # not read: read again next time
                    raise
                self._buffer.extend(Event(event_id, body) for event_id, body in stored)
            elif item.order > self._last and (
                not self._buffer or item.order > self._buffer[-1].order
            ):
                self._buffer.append(item)
            if self._buffer:
                # a live event may repeat one just read from storage
                while self._buffer and self._buffer[0].order <= self._last:
                    self._buffer.popleft()
        event = self._buffer.popleft()
        self._last = event.order
        return event


async def follow(
    hub: EventHub, store: TaskStore, ref: TaskRef, after: str = "0-0"
) -> AsyncIterator[Event]:
    """Every event of a task after the id `after`, until the caller stops iterating."""
    async with hub.subscribe(store.keys.events(ref)) as sub:
        await sub.ready()
        events = TaskEvents(sub, store, ref, after)
        while True:
            yield await events.next()
