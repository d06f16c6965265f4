"""A real webhook receiver on loopback for tests, with scripted answers per path."""

from __future__ import annotations

import contextlib
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


@dataclass
class Receiver:
    port: int = 0
    received: list[Received] = field(default_factory=list)
    # path -> list of answers, used in turn; the last one repeats
    script: dict[str, list[Answer]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)
    connections: list[Any] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str, *answers: Answer) -> str:
        with self.lock:
            self.script[path] = list(answers) or [(200, {}, 0.0)]
        return self.url(path)

    def requests(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def _next(self, path: str) -> Answer:
        with self.lock:
            answers = self.script.get(path, [(200, {}, 0.0)])
            return answers.pop(0) if len(answers) > 1 else answers[0]


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

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
            with receiver.lock:
                receiver.received.append(
                    Received(
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        time.time(),
                    )
                )
            answer = receiver._next(self.path)
            status, headers, stall = answer[0], answer[1], answer[2]
            if stall:
                receiver.release.wait(stall)
            # by default, more than taskwire reads of a receiver's answer
            payload = answer[3] if len(answer) > 3 else b"ok" * 10_000
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            with contextlib.suppress(OSError):  # taskwire hung up after its byte cap
                self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
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
