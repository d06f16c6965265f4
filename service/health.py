"""The API's probes: GET /livez (the process answers) and /readyz (it should get new work).

Readiness fails while Redis does not answer a PING within a second, while the catalog has no
model, before the lifespan has started and from the moment the process is told to stop
(`Lifecycle.draining`, set by `python -m service` on SIGTERM, before uvicorn's graceful
shutdown begins, and by the lifespan when it ends), so a load balancer stops sending new
work while requests in flight finish. `/health` (Redis only) is kept for existing checks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from service.api import json_response

log = structlog.get_logger("taskwire.service")

REDIS_PING_TIMEOUT_S = 1.0

router = APIRouter()


@dataclass(slots=True)
class Lifecycle:
    """Where the process is in its life: serving once started, draining once told to stop."""

    started: bool = False
    draining: bool = False

    def begin_drain(self, reason: str) -> None:
        if not self.draining:
            self.draining = True
            log.info("service.draining", reason=reason)


def lifecycle(app: FastAPI) -> Lifecycle:
    state: Lifecycle = app.state.lifecycle
    return state


def _no_store(body: dict[str, Any], status: int) -> Response:
    response = json_response(body, status)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/livez", include_in_schema=False)
async def livez() -> Response:
    # Nothing but the process's own event loop: a dependency's outage must not restart it.
    return _no_store({"status": "ok"}, 200)


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Response:
    life = lifecycle(request.app)
    checks = {
        "started": "ok" if life.started else "starting",
        "shutdown": "draining" if life.draining else "no",
        "catalog": "skipped",
        "redis": "skipped",
    }
    if life.started and not life.draining:
        state = request.app.state.taskwire
        checks["catalog"] = "ok" if state.catalog.ids() else "empty"
        try:
            await asyncio.wait_for(state.redis.ping(), REDIS_PING_TIMEOUT_S)
            checks["redis"] = "ok"
        except (RedisError, OSError, TimeoutError):
            checks["redis"] = "unreachable"
    ready = all(value in ("ok", "no") for value in checks.values())
    return _no_store(
        {"status": "ok" if ready else "unavailable", "checks": checks}, 200 if ready else 503
    )
