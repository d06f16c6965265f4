"""Segmind upstream: `POST /v1/<model>` with `messages` and `x-api-key`, answered whole."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import structlog

from core.errors import UpstreamError, UpstreamRejected, UpstreamServerError
from worker.providers.base import (
    UpstreamCall,
    UpstreamEvent,
    error_for_status,
    error_for_transport,
    request_timeout,
)
from worker.providers.openai_chat import build_messages, parse_completion

log = structlog.get_logger("taskwire.providers.segmind")


def build_body(call: UpstreamCall) -> dict[str, Any]:
    """Segmind documents `messages` only; providerSettings pass through for the rest."""
    body: dict[str, Any] = dict(call.task.providerSettings or {})
    body["messages"] = build_messages(call.task, call.images)
    return body


def error_for_segmind(response: httpx.Response) -> UpstreamError:
    """Segmind's documented statuses: 401 auth, 404, 405, 406 out of credits, 500."""
    status = response.status_code
    if status == 401:
        return UpstreamRejected(
            "The model provider refused taskwire's credentials; the operator has been told.",
            http_status=status,
        )
    if status in (404, 405):
        return UpstreamRejected(
            "The model provider does not serve this model here.", http_status=status
        )
    if status == 406:
        # Not worth retrying on this route; another provider may still answer.
        return UpstreamRejected(
            "The model provider account is out of credits.",
            code="noAvailableServer",
            http_status=status,
        )
    if status >= 500:
        return UpstreamServerError(
            f"The model provider failed (HTTP {status}).", http_status=status
        )
    return error_for_status(response)


class SegmindAdapter:
    name = "segmind"

    def __init__(self, connect_timeout_s: float = 5.0, low_credits: float = 5.0):
        self._connect_timeout_s = connect_timeout_s
        self._low_credits = low_credits

    async def stream(
        self, client: httpx.AsyncClient, call: UpstreamCall
    ) -> AsyncIterator[UpstreamEvent]:
        url = f"{call.route.base_url}/{call.route.model}"
        headers = {"x-api-key": call.api_key, **call.route.headers}
        try:
            response = await client.post(
                url,
                json=build_body(call),
                headers=headers,
                timeout=request_timeout(call.route, self._connect_timeout_s),
            )
        except httpx.HTTPError as exc:
            raise error_for_transport(exc, streaming=False) from exc
        self._note_credits(call, response)
        if response.status_code >= 400:
            raise error_for_segmind(response)
        try:
            events = parse_completion(response.content)
        except UpstreamError:
            raise UpstreamRejected(
                "The model provider answered with something that is not a completion.",
                code="unrecognizedResponse",
                http_status=response.status_code,
            ) from None
        if not events:
            raise UpstreamRejected(
                "The model provider answered with something that is not a completion.",
                code="unrecognizedResponse",
                http_status=response.status_code,
            )
        for event in events:
            yield event

    def _note_credits(self, call: UpstreamCall, response: httpx.Response) -> None:
        remaining = response.headers.get("x-remaining-credits")
        if remaining is None:
            return
        try:
            left = float(remaining)
        except ValueError:
            return
        emit = log.warning if left < self._low_credits else log.info
        emit("segmind.credits", route=call.route.name, remaining_credits=left)
