"""A lean open-loop HTTP/1.1 load generator for the benchmarks.

httpx costs the benchmark process about 5 ms of CPU per request, so on a 2-core machine it,
not taskwire, capped the offered rate near 120 requests/s. This one writes pre-encoded
requests on raw keep-alive connections and reads just the status line, headers and a
Content-Length body (tens of microseconds a request), so the machine's cores go to the
stack under test.

Open loop: request n is due at start + n / rate whatever the earlier answers did; each is
sent on an idle connection (a new one is opened when none is idle, up to `max_connections`),
and its latency is measured from when it was due, so a stalled server is not hidden by a
generator that waits for it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Outcome:
    status: int
    latency_ms: float
    body: bytes


@dataclass
class Run:
    offered: int
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    failed: int = 0  # connection errors

    def latencies(self, status: int) -> list[float]:
        return [o.latency_ms for o in self.outcomes if o.status == status]


# An idle connection is not reused after this long: servers close idle keep-alive
# connections (uvicorn after 5 s), and a request written on one that was just closed fails
# for the generator, not the server (HTTP clients expire theirs the same way: httpx, 5 s).
KEEPALIVE_EXPIRY_S = 4.0


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await self.reader.readexactly(length) if length else b""
        return status, body


class LoadGenerator:
    def __init__(self, url: str, max_connections: int = 1000):
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.max_connections = max_connections
        self._idle: list[_Connection] = []
        self._open = 0

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += [f"Content-Length: {len(body)}", "Content-Type: application/json", "", ""]
        return "\r\n".join(lines).encode() + body

    def _reuse(self) -> _Connection | None:
        """The most recently used idle connection not past its keep-alive expiry (expired
        ones are closed)."""
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < KEEPALIVE_EXPIRY_S:
                return connection
            self._open -= 1
            connection.writer.close()
        return None

    async def _connection(self) -> _Connection:
        reused = self._reuse()
        if reused is not None:
            return reused
        while self._open >= self.max_connections:
            await asyncio.sleep(0.001)
            reused = self._reuse()
            if reused is not None:
                return reused
        self._open += 1
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            self._open -= 1
            raise
        return _Connection(reader, writer)

    async def one(self, raw: bytes, due: float, run: Run) -> None:
        try:
            connection = await self._connection()
        except OSError:
            run.failed += 1
            return
        try:
            status, body = await connection.request(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self._open -= 1
            connection.writer.close()
            run.failed += 1
            return
        run.outcomes.append(Outcome(status, (time.perf_counter() - due) * 1000, body))
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    async def open_loop(self, rate: float, seconds: float, request: Callable[[int], bytes]) -> Run:
        """Offer `rate` requests a second for `seconds`; `request(n)` builds the n-th."""
        run = Run(offered=int(rate * seconds), seconds=seconds)
        pending: list[asyncio.Task[None]] = []
        started = time.perf_counter()
        for n in range(run.offered):
            due = started + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(self.one(request(n), due, run)))
        await asyncio.gather(*pending)
        return run

    async def closed_loop(
        self, clients: int, seconds: float, request: Callable[[int], bytes]
    ) -> Run:
        """`clients` callers asking back to back for `seconds` (to find the capacity)."""
        run = Run(offered=0, seconds=seconds)
        deadline = time.perf_counter() + seconds
        counter = 0

        async def caller() -> None:
            nonlocal counter
            while time.perf_counter() < deadline:
                counter += 1
                await self.one(request(counter), time.perf_counter(), run)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(clients)))
        run.seconds = time.perf_counter() - started
        run.offered = counter
        return run

    def close(self) -> None:
        for connection in self._idle:
            connection.writer.close()
        self._idle.clear()
