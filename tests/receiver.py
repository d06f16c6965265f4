"""A real webhook receiver on loopback for tests, with scripted answers per path: it can stall,
or stay silent (accept the request and never answer), and it counts requests in flight."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


# An answer: status, headers, seconds to stall before answering, and optionally a body.
Answer = tuple[int, dict[str, str], float] | tuple[int, dict[str, str], float, bytes]
# A stall longer than any test: the request is accepted and never answered (until shutdown).
SILENT: Answer = (200, {}, 3600.0)


@dataclass
class Receiver:
    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    # path -> list of answers, used in turn; the last one repeats
    script: dict[str, list[Answer]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)
    connections: list[Any] = field(default_factory=list)
    # path -> requests being answered now, and the most there ever were at once
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def answer(self, path: str, *answers: Answer) -> str:
        with self.lock:
            self.script[path] = list(answers) or [(200, {}, 0.0)]
        return self.url(path)

    def silent(self, path: str) -> str:
        """A path that accepts every request and never answers it."""
        return self.answer(path, SILENT)

    def requests(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def _next(self, path: str) -> Answer:
        with self.lock:
            answers = self.script.get(path, [(200, {}, 0.0)])
            return answers.pop(0) if len(answers) > 1 else answers[0]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # hundreds of connections at once are not dropped SYNs


@contextmanager
def running_receiver(host: str = "127.0.0.1") -> Iterator[Receiver]:
    """A receiver listening on `host` (any 127.x.y.z works on Linux: a second receiver on
    another loopback address is another host to taskwire's per-host limits)."""
    receiver = Receiver(host=host)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with receiver.lock:
                receiver.connections.append(self.connection)

        def do_GET(self) -> None:
            self.do_POST()

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            path = self.path
            with receiver.lock:
                receiver.received.append(
                    Received(
                        path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                    )
                )
                now = receiver.in_flight.get(path, 0) + 1
                receiver.in_flight[path] = now
                receiver.max_in_flight[path] = max(receiver.max_in_flight.get(path, 0), now)
            try:
                self._answer(path)
            finally:
                with receiver.lock:
                    receiver.in_flight[path] -= 1

        def _answer(self, path: str) -> None:
            answer = receiver._next(path)
            status, headers, stall = answer[0], answer[1], answer[2]
            if stall and not self._stall(stall):
                return
            # by default, more than taskwire reads of a receiver's answer
            payload = answer[3] if len(answer) > 3 else b"ok" * 10_000
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            with contextlib.suppress(OSError):  # taskwire hung up after its byte cap
                self.wfile.write(payload)

        def _stall(self, seconds: float) -> bool:
            """Wait until released or the time is up; False if the client hung up first (a
            request it gave up on is no longer in flight, and gets no answer)."""
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0 and not receiver.release.is_set():
                readable, _, _ = select.select([self.connection], [], [], min(left, 0.5))
                if readable:
                    try:
                        if self.connection.recv(1, socket.MSG_PEEK) == b"":
                            return False
                    except OSError:
                        return False
                    receiver.release.wait(min(left, 0.5))  # a pipelined request: wait on
            return True

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = _Server((host, 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()
        with receiver.lock:
            for connection in receiver.connections:
                with contextlib.suppress(OSError):
                    connection.close()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    from devenv.procs import wait_until

    wait_until(check, timeout, what)
