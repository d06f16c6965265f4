"""The worker's own health probes: GET /livez and /readyz on its own port, served by a thread.

arq's health check is one Redis key shared by every worker of a queue: any worker that stops
deletes it for all, and it says nothing about a loop that hangs. Here each worker answers for
itself, from state its own event loop keeps:

* **liveness** (`/livez`): the loop ticked within `liveness_timeout_s`. A task on the loop
  stamps `WorkerHealth.beat` every `beat_interval_s`; a loop that is stuck (a blocking call,
  a busy spin) stops stamping and the probe fails, so the orchestrator restarts the worker.
  Waiting for Redis is not a liveness failure: the loop still ticks.
* **readiness** (`/readyz`): started, Redis answered recently (`redis_ok`, stamped by the
  worker's main loop after each successful round trip), and not draining after SIGTERM.

Why a thread and not an asyncio server on the worker's loop: a probe served by the loop it
judges cannot tell "stuck" from "busy for a second" (a probe timeout would restart a worker
that is merely saturated), and it would compete with jobs for that loop. The thread answers
at once whatever the loop is doing and judges the loop by its heartbeat. The stdlib server
(http.server) keeps it dependency-free. `/metrics` is one more path: the process's
Prometheus registry (worker/metrics.py) rendered by this thread (prometheus_client's own
exporter is the same design: a ThreadingHTTPServer beside the application).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import SecretStr

from core.metrics import scrape_allowed

log = structlog.get_logger("taskwire.worker")


@dataclass(slots=True)
class WorkerHealth:
    """What the probes read. Written by the worker's loop, read by the probe thread (plain
    attribute reads and writes of floats and bools, which need no lock)."""

    liveness_timeout_s: float = 30.0
    beat_interval_s: float = 1.0
    # Redis counts as reachable while its last successful round trip is this recent and no
    # error came after it (an idle worker talks to Redis every poll_fallback_s at least).
    redis_stale_s: float = 10.0
    beat: float = field(default_factory=time.monotonic)
    started: bool = False
    redis_ok_at: float | None = None
    redis_error_at: float | None = None
    # Whether the worker stopped taking work (SIGTERM); set by the worker to read its state.
    draining: Callable[[], bool] = lambda: False

    async def run(self) -> None:
        """Stamp the heartbeat forever (on the worker's loop; cancelled when it stops)."""
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(self.beat_interval_s)

    def redis_ok(self) -> None:
        self.redis_ok_at = time.monotonic()

    def redis_failed(self) -> None:
        self.redis_error_at = time.monotonic()

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self.beat
        return age < self.liveness_timeout_s, {"loopHeartbeatAgeS": round(age, 3)}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        live, details = self.liveness()
        ok_at, error_at = self.redis_ok_at, self.redis_error_at
        redis = (
            ok_at is not None
            and (error_at is None or error_at < ok_at)
            and now - ok_at < self.redis_stale_s
        )
        draining = self.draining()
        checks = {
            "loop": "ok" if live else "stuck",
            "started": "ok" if self.started else "starting",
            "redis": "ok" if redis else "unreachable",
            "shutdown": "draining" if draining else "no",
        }
        ready = live and self.started and redis and not draining
        return ready, {"checks": checks, **details}


class ProbeHandler(BaseHTTPRequestHandler):
    server: ProbeServer

    def do_GET(self) -> None:
        health = self.server.health
        path = self.path.split("?", 1)[0]
        if path == "/livez":
            ok, details = health.liveness()
        elif path == "/readyz":
            ok, details = health.readiness()
        elif path == "/metrics":
            if scrape_allowed(self.server.metrics_token, self.headers.get("Authorization")):
                self._send_bytes(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            else:
                self._send(401, {"status": "unauthorized", "detail": "a metrics token is required"})
            return
        else:
            self._send(404, {"status": "notFound"})
            return
        self._send(200 if ok else 503, {"status": "ok" if ok else "unavailable", **details})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body, separators=(",", ":")).encode()
        self._send_bytes(status, raw, "application/json")

    def _send_bytes(self, status: int, raw: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None  # probes every few seconds are not worth a log line


class ProbeServer(ThreadingHTTPServer):
    """The probe endpoints on (host, port), served from a daemon thread."""

    daemon_threads = True

    def __init__(
        self, host: str, port: int, health: WorkerHealth, metrics_token: SecretStr | None = None
    ):
        super().__init__((host, port), ProbeHandler)
        self.health = health
        self.metrics_token = metrics_token
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    def start(self) -> ProbeServer:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.5}, name="worker-probes"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("worker.probes_listening", host=self.server_address[0], port=self.port)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server_close()
