"""`python -m service`: run the API with uvicorn on $HOST:$PORT (default 127.0.0.1:8000).

uvicorn's own proxy-header handling is off (it would believe X-Forwarded-* from 127.0.0.1):
the app decides whom to believe, from TASKWIRE_TRUSTED_PROXIES (service/origin.py).

Stopping: the first SIGTERM (or Ctrl-C) makes /readyz answer 503 at once; the API keeps
serving for TASKWIRE_API_SHUTDOWN_DELAY_S so load balancers take it out of rotation, then
uvicorn stops accepting connections and gives requests in flight
TASKWIRE_API_SHUTDOWN_GRACE_S to finish. A second signal skips the delay. Task WebSockets
(service/ws.py) are drained first: within the grace they push what they owe, then close
with 1001 ("going away"), and their clients resume on another process. The process then
exits 0.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from core.logging import configure_logging
from core.settings import Settings
from core.tracing import setup_tracing, shutdown_tracing
from service.app import create_app
from service.delivery import sync_waits
from service.health import Lifecycle, lifecycle
from service.ws import LeanSocketProtocol, sockets_of


class DrainingServer(uvicorn.Server):
    """uvicorn's Server, which on the first stop signal marks the app draining and waits
    `delay_s` (still serving) before its own graceful shutdown."""

    def __init__(self, config: uvicorn.Config, life: Lifecycle, delay_s: float):
        super().__init__(config)
        self.life = life
        self.delay_s = delay_s
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.life.begin_drain(f"signal {sig}")
        if self.delay_s > 0 and self._exit_at is None and not self.should_exit:
            self._exit_at = time.monotonic() + self.delay_s  # on_tick ends the delay
            return
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Requests still waiting for results when the grace ends would be cancelled (a bare
        # 500): their waits end a little before it, and they answer as a wait that ran out
        # of time does (a sync task's 202: its client polls another process).
        grace = self.config.timeout_graceful_shutdown or 0
        sync_waits.end_by(asyncio.get_running_loop().time() + grace - min(1.0, grace / 4))
        app = self.config.app
        if isinstance(app, FastAPI):  # task sockets close with 1001, not uvicorn's 1012
            await sockets_of(app).drain(self.config.timeout_graceful_shutdown or 0)
        await super().shutdown(sockets)
        # Shut down as asked: exit 0, rather than uvicorn raising the captured signal again
        # once its handlers are restored (the process would then die of it: -15, or 143).
        self._captured_signals.clear()

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, process="api")
    setup_tracing("api", settings.trace_file)  # off unless OTEL_* (or the trace file) say
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=settings.api_shutdown_grace_s,
        proxy_headers=False,
        # Task WebSocket frames: the body limit (service/ws.py answers one byte over it,
        # uvicorn closes bigger ones with 1009 unread); no per-message deflate, whose zlib
        # state per socket would dwarf an idle socket's memory.
        ws_max_size=settings.max_body_bytes + 1,
        ws_per_message_deflate=False,
        # uvicorn's sans-I/O protocol, made lighter per idle socket (service/ws.py)
        ws=LeanSocketProtocol,
    )
    try:
        DrainingServer(config, lifecycle(app), settings.api_shutdown_delay_s).run()
    finally:
        shutdown_tracing()  # exports the spans still buffered


if __name__ == "__main__":
    main()
