"""The operator console: `/console` (a static page) over JSON endpoints under /admin/console.

Everything answers 404 unless TASKWIRE_ADMIN_TOKEN is set, like the rest of /admin. The page
holds no data: it asks for the admin token, keeps it in the tab's sessionStorage and sends it
as a bearer header on each fetch (never in a URL). Every JSON endpoint checks the token (401
without it or with a wrong one) and reads Redis in a few bounded round trips
(core/console.py), so a page left open polling costs little whatever the fleet's size.

  GET  /console                       the page
  GET  /admin/console/queue           waiting jobs by class and by key, running jobs
  GET  /admin/console/routes          each route's failures in a row and cool-down
  GET  /admin/console/failures        failed results by code (last hour, 5 min), latest ones
  GET  /admin/console/webhooks        receivers with failing deliveries, by host
  POST /admin/console/webhooks/resend {"host": h} | {"delivery": id}: attempt again now
  GET  /admin/console/keys            keys (managed and from settings) and their usage
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.console import ConsoleReader
from core.errors import InvalidRequest
from core.failures import FailureLog
from service.admin_api import admin_enabled, require_admin
from service.api import json_response
from service.auth import key_digest, owner_id
from service.state import AppState

log = structlog.get_logger("taskwire.console")
router = APIRouter(include_in_schema=False)
_PAGE = (Path(__file__).parent / "static" / "console.html").read_text()
# The page runs only its own inline script and style, talks only to this origin, and may not
# be framed (its re-send buttons are not for clickjacking).
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
RESEND_BATCH = 200
RESEND_MAX = 1000
RESEND_SHOWN = 100


class Resend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str | None = Field(default=None, min_length=1, max_length=255)
    delivery: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{16}:[0-9A-Za-z-]{1,64}:\d{1,3}:webhook$"
    )

    @model_validator(mode="after")
    def one_of(self) -> Resend:
        if (self.host is None) == (self.delivery is None):
            raise ValueError("give either 'host' or 'delivery'")
        return self


def _reader(request: Request) -> ConsoleReader:
    """The process's reader (built on first use), for a request carrying the admin token."""
    require_admin(request)
    reader: ConsoleReader | None = getattr(request.app.state, "console", None)
    if reader is None:
        state: AppState = request.app.state.taskwire
        reader = ConsoleReader(state.redis, state.store.keys)
        request.app.state.console = reader
    return reader


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.taskwire
    return state


def _json(data: Any, status: int = 200) -> Response:
    return json_response({"data": data}, status, headers={"Cache-Control": "no-store"})


@router.get("/console", response_class=HTMLResponse)
async def console_page(request: Request) -> HTMLResponse:
    """The page (no data in it: it fetches the endpoints below with the token)."""
    admin_enabled(request)
    return HTMLResponse(_PAGE, headers=_PAGE_HEADERS)


@router.get("/admin/console/queue")
async def queue(request: Request) -> Response:
    reader = _reader(request)
    snapshot = await reader.queue()
    snapshot["running"] = await reader.running()
    return _json(snapshot)


@router.get("/admin/console/routes")
async def routes(request: Request) -> Response:
    reader = _reader(request)
    settings = _state(request).settings
    found = await reader.routes(
        _state(request).catalog, settings.route_failure_threshold, settings.route_cooldown_s
    )
    return _json(found)


@router.get("/admin/console/failures")
async def failures(request: Request) -> Response:
    reader = _reader(request)
    failure_log = FailureLog(reader.redis, reader.keys)
    counts = await failure_log.counts(time.time())
    codes = sorted(counts.by_code, key=lambda code: (-counts.by_code[code], code))
    return _json(
        {
            "windowMinutes": counts.window_minutes,
            "byCode": [
                {
                    "code": code,
                    "count": counts.by_code[code],
                    "last5Minutes": counts.last_5_minutes.get(code, 0),
                }
                for code in codes
            ],
            "recent": await failure_log.recent(50),
        }
    )


@router.get("/admin/console/webhooks")
async def webhooks(request: Request) -> Response:
    return _json(await _reader(request).webhooks())


@router.post("/admin/console/webhooks/resend")
async def resend(request: Request) -> Response:
    """Attempt a failing delivery (or every failing one of a receiver host, up to
    RESEND_MAX) again now. One already on its way is left alone, never doubled."""
    reader = _reader(request)
    try:
        body = Resend.model_validate_json(await request.body() or b"{}")
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error.get("loc", ())) or "body"
        raise InvalidRequest(f"Invalid value for '{where}': {error.get('msg')}.") from None
    if body.delivery is not None:
        ids = [body.delivery]
    else:
        assert body.host is not None
        ids = await reader.failing_ids(body.host, RESEND_MAX)
    deliveries = _state(request).deliveries
    outcomes: dict[str, str] = {}
    for start in range(0, len(ids), RESEND_BATCH):
        outcomes.update(await deliveries.resend_now(ids[start : start + RESEND_BATCH]))
    if body.host is not None:
        await reader.forget([(body.host, job) for job, o in outcomes.items() if o == "gone"])
    counts = {name: 0 for name in ("now", "resent", "running", "due", "gone")}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    log.info("console.resend", host=body.host, delivery=body.delivery, **counts)
    shown = [{"id": job, "outcome": o} for job, o in list(outcomes.items())[:RESEND_SHOWN]]
    attempted = counts["now"] + counts["resent"]
    return _json(
        {"host": body.host, "outcomes": counts, "deliveries": shown}, 202 if attempted else 200
    )


@router.get("/admin/console/keys")
async def keys(request: Request) -> Response:
    reader = _reader(request)
    settings = _state(request).settings
    records, more = await reader.managed_keys()
    owners: dict[str, dict[str, Any]] = {}
    for api_key in settings.all_api_keys():
        owner = owner_id(key_digest(api_key))
        owners.setdefault(owner, {"owner": owner, "source": "settings", "keys": []})
    now = time.time()
    for record in records:
        entry = owners.setdefault(
            record.owner, {"owner": record.owner, "source": "managed", "keys": []}
        )
        entry["keys"].append(record.public(now))
    usage = await reader.usage(list(owners))
    rows = []
    for owner, entry in owners.items():
        found = usage[owner]
        name = found.pop("name")
        rows.append({**entry, "name": name, "usage": found})
    rows.sort(
        key=lambda r: (
            -(r["usage"]["queued"] + r["usage"]["runningResults"]),
            -r["usage"]["tokensThisMinute"],
            -r["usage"]["tasksLastHour"],
            r["owner"],
        )
    )
    defaults = {
        "weight": settings.key_weight,
        "max_running": settings.key_max_running,
        "max_deliveries": settings.key_max_deliveries,
        "max_queued": settings.key_max_queued,
        "rps": settings.key_rps,
        "burst": settings.key_burst,
        "read_rps": settings.key_read_rps,
        "read_burst": settings.key_read_burst,
        "tokens_per_minute": settings.key_tokens_per_minute,
    }
    return _json({"defaults": defaults, "owners": rows, "truncated": more})
